"""Users of the HTTP API: local accounts, login sessions, lockout, and the audit trail.

Passwords are kept only as argon2id hashes (argon2-cffi's defaults, RFC 9106's second
recommended profile). A session is a random token in the user's cookie; the ledger keeps only
its sha256, with a CSRF token and an expiry, so reading the database opens no session. After
``max_failed_logins`` failures in a row an account is locked for ``lockout_s``: the right
password is refused too until then. Every login, failed login and action through the API is a
row of the ``audit`` table (who, role, from where, what, which job, outcome, when).

Directory users (``[web.ldap]``, :mod:`node.core.directory`) log in when no local account has
their name: a local account always wins. At each login their role is set from their groups,
in a shadow row of ``users`` (``source = "ldap"``, a ``password_hash`` that never verifies) that
sessions, lockout and the audit trail reference. Failures of a name that has no row yet are
counted in this process's memory, so a directory user is locked out on the same terms before
their first login too.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.core import audit, db
from node.core.directory import (
    NO_MAPPED_GROUP,
    Directory,
    DirectoryRefused,
    DirectoryUnreachable,
)
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
    #: "session" (a login's cookie) or "token" (an API token: then ``user_id`` is the token's
    #: row, ``name`` is "token:<its name>" and ``csrf_token`` is empty)
    via: str = "session"


@dataclass(frozen=True)
class OpenedSession:
    """A new session: the token goes into the cookie and is kept nowhere else."""

    token: str
    session: Session


_HASHER = PasswordHasher()  # argon2id


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so that a wrong name costs as long as a wrong
    password and the timing does not tell which names exist. Made on first use (an argon2 hash
    costs a third of a second, which every ``dicom-node`` command would otherwise pay)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


#: ``users.source`` of local accounts and of directory users' shadow rows
LOCAL, LDAP = "local", "ldap"
#: a directory user's password_hash: not an argon2 hash, so nothing ever verifies against it
_NO_PASSWORD = "!ldap: the directory checks this user's password"  # noqa: S105 - a marker
#: what the audit trail and the session call an API token: "token:<its name>", so that no
#: user (local or from the directory) can be mistaken for a machine
TOKEN_PREFIX = "token:"  # noqa: S105 - a prefix, not a secret
#: names without a row whose failed logins are counted in memory, at most (oldest forgotten)
_MAX_UNSEEN = 10000


def digest(token: str) -> str:
    """The sha256 the ledger keeps of a random secret (a session cookie, an API token)."""
    return hashlib.sha256(token.encode()).hexdigest()


class _Failures:
    """Failed logins of names that have no row yet (directory users before their first login),
    as ``users.failed_logins``/``locked_until`` count them for the others: in memory, bounded."""

    def __init__(self, max_failed: int, lockout: timedelta) -> None:
        self._max, self._lockout = max_failed, lockout
        self._seen: OrderedDict[str, tuple[int, datetime | None]] = OrderedDict()
        self._lock = threading.Lock()

    def locked(self, name: str, now: datetime) -> bool:
        with self._lock:
            until = self._seen.get(name, (0, None))[1]
        return until is not None and until > now

    def failed(self, name: str, now: datetime) -> None:
        with self._lock:
            count = self._seen.pop(name, (0, None))[0] + 1
            self._seen[name] = ((0, now + self._lockout) if count >= self._max
                                else (count, None))
            while len(self._seen) > _MAX_UNSEEN:
                self._seen.popitem(last=False)

    def forget(self, name: str) -> None:
        with self._lock:
            self._seen.pop(name, None)


class Accounts:
    def __init__(self, engine: Engine, *, session_ttl_s: float = 28800.0,
                 max_failed_logins: int = 5, lockout_s: float = 900.0,
                 directory: Directory | None = None) -> None:
        self.engine = engine
        self._ttl = timedelta(seconds=session_ttl_s)
        self._max_failed = max_failed_logins
        self._lockout = timedelta(seconds=lockout_s)
        self.directory = directory
        self._unseen = _Failures(max_failed_logins, self._lockout)

    @staticmethod
    def prepare_logins() -> None:
        """Make the unknown-name hash before the first login, so that the first refusal of an
        unknown name takes no longer than later ones (the web server calls this at start)."""
        _dummy_hash()

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
        self._update(name, values, local_only=True)

    def set_role(self, name: str, role: Role) -> None:
        """A local user's new role; their open sessions end (a directory user's role is set
        from their groups at each login)."""
        self._update(name, {"role": role.value, "updated_at": utcnow()}, local_only=True)

    def disable(self, name: str) -> None:
        """The account can no longer log in; its open sessions end now."""
        self._update(name, {"disabled": True, "updated_at": utcnow()})

    def _update(self, name: str, values: dict[str, Any], *, local_only: bool = False) -> None:
        u = db.users.c
        with self.engine.begin() as conn:
            row = conn.execute(select(u.id, u.source).where(u.name == name)).one_or_none()
            if row is None:
                raise NodeError(f"no user {name!r}")
            if local_only and row.source != LOCAL:
                raise NodeError(f"user {name!r} logs in through the directory: its password "
                                "and role are the directory's")
            user_id = row.id
            conn.execute(update(db.users).where(u.id == user_id).values(**values))
            conn.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id))

    # ------------------------------------------------------------------ sessions (web)

    def login(self, name: str, password: str, address: str) -> OpenedSession:
        """Open a session, or raise LoginRefused (always the same words, whatever was wrong,
        except for a locked account). A local account of that name is checked here; any other
        name by the directory, when ``[web.ldap]`` is on, which raises DirectoryUnreachable
        when it does not answer. Each outcome is an audit record."""
        u = db.users.c
        now = utcnow()
        with db.reader(self.engine) as conn:
            row = conn.execute(select(u.id, u.role, u.password_hash, u.disabled, u.source,
                                      u.failed_logins, u.locked_until)
                               .where(u.name == name)).one_or_none()
        if row is not None and row.source == LOCAL:
            self._check_local(row, name, password, address, now)
            user_id, role, how = int(row.id), Role(row.role), ""
        elif self.directory is not None and _name_ok(name):
            user_id, role = self._check_directory(self.directory, row, name, password,
                                                  address, now)
            how = "directory"
        else:
            _verify(_dummy_hash(), password)
            self.record(name=None, role=None, address=address, action="login",
                        outcome="refused", detail="unknown user" if row is None else
                        "directory login is off")
            raise LoginRefused("wrong user name or password")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + self._ttl
        with self.engine.begin() as conn:
            conn.execute(update(db.users).where(u.id == user_id)
                         .values(failed_logins=0, locked_until=None))
            conn.execute(delete(db.sessions).where(db.sessions.c.expires_at < now))
            conn.execute(insert(db.sessions).values(
                token_hash=digest(token), user_id=user_id, csrf_token=csrf,
                address=address[:64], created_at=now, expires_at=expires))
        self.record(name=name, role=role, address=address, action="login", outcome="ok",
                    detail=how)
        return OpenedSession(token, Session(user_id, name, role, csrf, expires))

    def _check_local(self, row: Any, name: str, password: str, address: str,
                     now: datetime) -> None:
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

    def _check_directory(self, directory: Directory, row: Any, name: str, password: str,
                         address: str, now: datetime) -> tuple[int, Role]:
        """The directory's verdict on a name without a local account; the user's shadow row
        (made at their first login) and role."""
        before = None if row is None else Role(row.role)
        locked = (self._unseen.locked(name, now) if row is None else
                  row.locked_until is not None and row.locked_until > now)
        if locked:
            self.record(name=name, role=before, address=address, action="login",
                        outcome="refused", detail="account locked")
            raise LoginRefused("too many failed logins: the account is locked for a while",
                               locked=True)
        try:
            if row is not None and row.disabled:
                raise DirectoryRefused("disabled")  # by `user disable`: the directory is not asked
            found = directory.authenticate(name, password)
        except DirectoryRefused as exc:
            if row is None:
                self._unseen.failed(name, now)
            else:
                self._failed(row.id, int(row.failed_logins), now)
                if exc.reason == NO_MAPPED_GROUP:  # they are no longer anyone here: end
                    self._end_sessions(row.id)     # their sessions (the right password said so)
            self.record(name=name, role=before, address=address, action="login",
                        outcome="refused", detail=exc.reason)
            raise LoginRefused("wrong user name or password") from None
        except DirectoryUnreachable as exc:
            self.record(name=name, role=before, address=address, action="login",
                        outcome="error", detail=str(exc))
            raise
        self._unseen.forget(name)
        role = Role(found.role)
        return self._shadow(name, role, now), role

    def _end_sessions(self, user_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id))

    def _shadow(self, name: str, role: Role, now: datetime) -> int:
        """The directory user's row, made or given its role of this login."""
        u = db.users.c
        with self.engine.begin() as conn:
            conn.execute(db.insert_ignoring_conflicts(self.engine, db.users, "name").values(
                name=name, role=role.value, password_hash=_NO_PASSWORD, disabled=False,
                failed_logins=0, created_at=now, updated_at=now, source=LDAP))
            conn.execute(update(db.users).where(u.name == name, u.source == LDAP)
                         .values(role=role.value, updated_at=now))
            user_id = conn.execute(select(u.id).where(u.name == name, u.source == LDAP)
                                   ).scalar_one_or_none()
        if user_id is None:  # a local account of that name was added meanwhile: it wins
            raise LoginRefused("wrong user name or password")
        return int(user_id)

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
                .where(s.token_hash == digest(token))).one_or_none()
        if row is None or row.disabled or row.expires_at <= utcnow():
            return None
        return Session(row.user_id, row.name, Role(row.role), row.csrf_token, row.expires_at)

    def logout(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(db.sessions).where(db.sessions.c.token_hash == digest(token)))

    # ------------------------------------------------------------------ audit trail

    def record(self, *, name: str | None, role: Role | None, address: str, action: str,
               outcome: str, study_id: int | None = None, detail: str = "") -> None:
        """One audit record (``node.core.audit``). ``detail`` is the node's own words, never
        request data."""
        audit.record(self.engine, audit.Entry(
            action=action, outcome=outcome, user=name, role=None if role is None else role.value,
            address=address, study_id=study_id, detail=detail))

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
    if not _name_ok(name):
        raise NodeError("a user name is 1 to 64 printable characters, without outer spaces, "
                        f"not starting with {TOKEN_PREFIX!r}")


def _name_ok(name: str) -> bool:
    """A name a user may have: 1 to 64 printable characters without outer spaces, and not an
    API token's audit name."""
    return (1 <= len(name) <= 64 and name.isprintable() and name == name.strip()
            and not name.startswith(TOKEN_PREFIX))
