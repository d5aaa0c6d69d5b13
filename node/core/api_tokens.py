"""API tokens for machines: a random secret shown once, kept only as its sha256, scoped to a role.

A monitoring system or a script sends ``Authorization: Bearer <token>`` instead of logging in.
The token is 256 random bits (``secrets.token_urlsafe(32)``) behind a ``dnt_`` prefix that
secret scanners can look for; the ledger keeps its sha256, so reading the database opens
nothing, and a plain digest is enough where the secret is random (a password needs argon2
because people choose guessable ones).

A token acts with its role, as ``token:<name>`` in the audit trail. Its use is written (its
``last_used_at`` and an audit record "token"/"ok") at most once a ``TOUCH_INTERVAL``, so that a
machine polling every few seconds does not write on every read; every refused token (unknown,
revoked, expired) is an audit record. A revoked token stays in the table: its name keeps
naming one token in the audit trail and cannot be given to another.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from node.core import db
from node.core.accounts import TOKEN_PREFIX, Accounts, Role, Session, digest
from node.core.errors import NodeError
from node.core.ledger import iso_z, utcnow

#: a token's name: what the audit trail shows after "token:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
#: what every token starts with
SECRET_PREFIX = "dnt_"  # noqa: S105 - a prefix, not a secret
#: a token's use is written down at most this often
TOUCH_INTERVAL = timedelta(seconds=60)
#: the expiry a session made from a token without one shows
NEVER = datetime(9999, 12, 31)


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``token list`` and the API show it: never its secret or digest."""

    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_json(self, now: datetime) -> dict[str, Any]:
        def when(t: datetime | None) -> str | None:
            return None if t is None else iso_z(t)

        return {"name": self.name, "role": self.role.value, "state": self.state(now),
                "created_at": iso_z(self.created_at), "expires_at": when(self.expires_at),
                "last_used_at": when(self.last_used_at), "revoked_at": when(self.revoked_at)}


class ApiTokens:
    """The ``api_tokens`` table; audit records go through the accounts' trail."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self.engine = accounts.engine

    def add(self, name: str, role: Role, *, expires_days: int | None = None) -> str:
        """A new token; the returned secret is shown once and kept nowhere."""
        if not NAME.fullmatch(name):
            raise NodeError("a token name is 1 to 48 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
        if expires_days is not None and expires_days < 1:
            raise NodeError("--expires-days: at least 1")
        now = utcnow()
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        expires = None if expires_days is None else now + timedelta(days=expires_days)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(db.api_tokens).values(
                    name=name, token_hash=digest(secret), role=role.value, created_at=now,
                    expires_at=expires))
        except IntegrityError:
            raise NodeError(f"a token named {name!r} exists (or existed: a revoked token's "
                            "name is not given again)") from None
        return secret

    def list(self) -> list[TokenInfo]:
        t = db.api_tokens.c
        with db.reader(self.engine) as conn:
            rows = conn.execute(select(t.name, t.role, t.created_at, t.expires_at,
                                       t.last_used_at, t.revoked_at).order_by(t.id))
            return [TokenInfo(r.name, Role(r.role), r.created_at, r.expires_at,
                              r.last_used_at, r.revoked_at) for r in rows]

    def revoke(self, name: str) -> None:
        """The token is refused from now on (a second revoke is an error: nothing changed)."""
        t = db.api_tokens.c
        with self.engine.begin() as conn:
            done = conn.execute(update(db.api_tokens)
                                .where(t.name == name, t.revoked_at.is_(None))
                                .values(revoked_at=utcnow()))
        if done.rowcount != 1:
            raise NodeError(f"no active token named {name!r}")

    def session(self, secret: str, address: str) -> Session | None:
        """What a bearer token may do (None: unknown, revoked or expired; audited)."""
        t = db.api_tokens.c
        now = utcnow()
        with db.reader(self.engine) as conn:
            row = conn.execute(select(t.id, t.name, t.role, t.expires_at, t.last_used_at,
                                      t.revoked_at)
                               .where(t.token_hash == digest(secret))).one_or_none()
        if row is None:
            self._accounts.record(name=None, role=None, address=address, action="token",
                                  outcome="refused", detail="unknown token")
            return None
        who, role = TOKEN_PREFIX + row.name, Role(row.role)
        info = TokenInfo(row.name, role, now, row.expires_at, row.last_used_at, row.revoked_at)
        if info.state(now) != "active":
            self._accounts.record(name=who, role=role, address=address, action="token",
                                  outcome="refused", detail=info.state(now))
            return None
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
            with self.engine.begin() as conn:
                conn.execute(update(db.api_tokens).where(t.id == row.id)
                             .values(last_used_at=now))
            self._accounts.record(name=who, role=role, address=address, action="token",
                                  outcome="ok")
        return Session(row.id, who, role, "", row.expires_at or NEVER, via="token")
