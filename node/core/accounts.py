"""Users of the HTTP API: local accounts, login sessions, lockout, and the audit trail.

Passwords are kept only as argon2id hashes (argon2-cffi's defaults, RFC 9106's second
recommended profile). A session is a random token in the user's cookie; the ledger keeps only
its sha256, with a CSRF token and an expiry, so reading the database opens no session. After
``max_failed_logins`` failures in a row an account is locked for ``lockout_s``: the right
password is refused too until then. Every login, failed login and action through the API is a
row of the ``audit`` table (who, role, from where, what, which job, outcome, when).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.core import db
from node.core.errors import NodeError
from node.core.ledger import iso_z, utcnow


class Role(StrEnum):
    ADMIN = "admin"  # settings, users, every action
    OPERATOR = "operator"  # queues, retry, quarantine; sees no patient identity
    RADIOLOGIST = "radiologist"  # results with the patient's identity, feedback, approval
    CLINICIAN = "clinician"  # reads results and reports


class LoginRefused(NodeError):
    """A login that did not open a session; ``locked`` when the account is locked out."""

    def __init__(self, message: str, *, locked: bool = False) -> None:
        super().__init__(message)
        self.locked = locked


@dataclass(frozen=True)
class Session:
    user_id: int
    name: str
    role: Role
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class OpenedSession:
    """A new session: the token goes into the cookie and is kept nowhere else."""

    token: str
    session: Session


_HASHER = PasswordHasher()  # argon2id
#: verified against when the name is unknown, so that a wrong name costs as long as a wrong
#: password and the timing does not tell which names exist
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, engine: Engine, *, session_ttl_s: float = 28800.0,
                 max_failed_logins: int = 5, lockout_s: float = 900.0) -> None:
        self.engine = engine
        self._ttl = timedelta(seconds=session_ttl_s)
        self._max_failed = max_failed_logins
        self._lockout = timedelta(seconds=lockout_s)

    # ------------------------------------------------------------------ accounts (CLI)

    def add_user(self, name: str, role: Role, password: str) -> None:
        _check_name(name)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(db.users).values(
                    name=name, role=role.value, password_hash=_HASHER.hash(password),
                    disabled=False, failed_logins=0, created_at=now, updated_at=now))
        except IntegrityError:
            raise NodeError(f"user {name!r} exists already (use `user passwd`)") from None

    def set_password(self, name: str, password: str, role: Role | None = None) -> None:
        """A new password (and role, when given); unlocks and re-enables the account and ends
        its sessions."""
        values: dict[str, Any] = {"password_hash": _HASHER.hash(password), "disabled": False,
                                  "failed_logins": 0, "locked_until": None,
                                  "updated_at": utcnow()}
        if role is not None:
            values["role"] = role.value
        self._update(name, values)

    def disable(self, name: str) -> None:
        """The account can no longer log in; its open sessions end now."""
        self._update(name, {"disabled": True, "updated_at": utcnow()})

    def _update(self, name: str, values: dict[str, Any]) -> None:
        u = db.users.c
        with self.engine.begin() as conn:
            user_id = conn.execute(select(u.id).where(u.name == name)).scalar_one_or_none()
            if user_id is None:
                raise NodeError(f"no user {name!r}")
            conn.execute(update(db.users).where(u.id == user_id).values(**values))
            conn.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id))

    # ------------------------------------------------------------------ sessions (web)

    def login(self, name: str, password: str, address: str) -> OpenedSession:
        """Open a session, or raise LoginRefused (always the same words, whatever was wrong,
        except for a locked account). Each outcome is an audit record."""
        u = db.users.c
        now = utcnow()
        with db.reader(self.engine) as conn:
            row = conn.execute(select(u.id, u.role, u.password_hash, u.disabled,
                                      u.failed_logins, u.locked_until)
                               .where(u.name == name)).one_or_none()
        if row is None:
            _verify(_DUMMY_HASH, password)
            self.record(name=None, role=None, address=address, action="login",
                        outcome="refused", detail="unknown user")
            raise LoginRefused("wrong user name or password")
        role = Role(row.role)
        if row.locked_until is not None and row.locked_until > now:
            self.record(name=name, role=role, address=address, action="login",
                        outcome="refused", detail="account locked")
            raise LoginRefused("too many failed logins: the account is locked for a while",
                               locked=True)
        if row.disabled or not _verify(row.password_hash, password):
            self._failed(row.id, int(row.failed_logins), now)
            self.record(name=name, role=role, address=address, action="login",
                        outcome="refused", detail="disabled" if row.disabled else
                        "wrong password")
            raise LoginRefused("wrong user name or password")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + self._ttl
        with self.engine.begin() as conn:
            conn.execute(update(db.users).where(u.id == row.id)
                         .values(failed_logins=0, locked_until=None))
            conn.execute(delete(db.sessions).where(db.sessions.c.expires_at < now))
            conn.execute(insert(db.sessions).values(
                token_hash=_digest(token), user_id=row.id, csrf_token=csrf,
                address=address[:64], created_at=now, expires_at=expires))
        self.record(name=name, role=role, address=address, action="login", outcome="ok")
        return OpenedSession(token, Session(row.id, name, role, csrf, expires))

    def _failed(self, user_id: int, failed_before: int, now: datetime) -> None:
        failed = failed_before + 1
        values: dict[str, Any] = {"failed_logins": failed}
        if failed >= self._max_failed:
            values = {"failed_logins": 0, "locked_until": now + self._lockout}
        with self.engine.begin() as conn:
            conn.execute(update(db.users).where(db.users.c.id == user_id).values(**values))

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token (None: unknown, expired or disabled user)."""
        s, u = db.sessions.c, db.users.c
        with db.reader(self.engine) as conn:
            row = conn.execute(
                select(s.user_id, u.name, u.role, s.csrf_token, s.expires_at, u.disabled)
                .join(db.users, u.id == s.user_id)
                .where(s.token_hash == _digest(token))).one_or_none()
        if row is None or row.disabled or row.expires_at <= utcnow():
            return None
        return Session(row.user_id, row.name, Role(row.role), row.csrf_token, row.expires_at)

    def logout(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(db.sessions).where(db.sessions.c.token_hash == _digest(token)))

    # ------------------------------------------------------------------ audit trail

    def record(self, *, name: str | None, role: Role | None, address: str, action: str,
               outcome: str, study_id: int | None = None, detail: str = "") -> None:
        """One audit record. ``detail`` is the node's own words, never request data."""
        with self.engine.begin() as conn:
            conn.execute(insert(db.audit).values(
                at=utcnow(), user_name=name, role=None if role is None else role.value,
                address=address[:64], action=action, study_id=study_id, outcome=outcome,
                detail=detail or None))

    def audit_page(self, *, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` audit records (older than record ``before``), newest first."""
        a = db.audit.c
        query = select(a.id, a.at, a.user_name, a.role, a.address, a.action, a.study_id,
                       a.outcome, a.detail).order_by(a.id.desc()).limit(limit)
        if before is not None:
            query = query.where(a.id < before)
        with db.reader(self.engine) as conn:
            return [{"id": r.id, "at": iso_z(r.at), "user": r.user_name, "role": r.role,
                     "address": r.address, "action": r.action, "job": r.study_id,
                     "outcome": r.outcome, "detail": r.detail} for r in conn.execute(query)]


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= 64 or not name.isprintable() or name != name.strip():
        raise NodeError("a user name is 1 to 64 printable characters, without outer spaces")
