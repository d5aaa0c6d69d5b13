"""Login with the hospital's directory: an LDAP simple bind as the user, a role from their groups.

The directory decides who the user is (their password is checked by the directory's bind, never
by the node) and which groups they are in; ``[web.ldap].roles`` turns the first of those groups
it lists into the user's role. The node keeps no directory password: the service account's is
read from the environment variable ``password_env`` names.

Everything typed by the user is escaped before it reaches the directory: the name as an RDN
value in ``user_dn_template`` (RFC 4514) and as a filter value in the filters (RFC 4515), so a
name like ``*)(uid=*`` matches no one. An empty password is refused here: LDAP reads a simple
bind with a DN and no password as an anonymous bind that succeeds (RFC 4513 section 5.1.2).

Every connection has a connect timeout and a receive timeout (``timeout_s``), and every search a
time and size limit. A directory that does not answer is :class:`DirectoryUnreachable`; its
messages name the failure's kind, never a password or the directory's reply.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from ldap3 import (  # type: ignore[import-untyped]
    AUTO_BIND_NONE,
    NONE,
    SIMPLE,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import LDAPException  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]
from ldap3.utils.dn import escape_rdn, parse_dn  # type: ignore[import-untyped]

from node.core.errors import ConfigError, NodeError, TransientError
from node.core.settings import LdapSettings

#: groups read for one user at most (more than any real user has; a bound on the answer)
MAX_GROUPS = 500
#: the refusal of a user whose password is right but who is in no group ``roles`` lists
NO_MAPPED_GROUP = "no mapped group"
#: LDAP result code of a bind whose DN or password is wrong (RFC 4511, appendix A)
INVALID_CREDENTIALS = 49


class DirectoryUnreachable(TransientError):
    """The directory did not answer (down, slow, TLS refused): nobody can log in through it now."""


class DirectoryRefused(NodeError):
    """The directory did not let this user in; ``reason`` is the node's own words for the audit
    trail ("wrong password", "unknown user", "no mapped group"), never the directory's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    #: the role of the first ``roles`` entry naming one of the user's groups
    role: str


class Directory:
    """One LDAP directory, as ``[web.ldap]`` describes it. Safe to share between threads: each
    login opens its own connections and closes them."""

    def __init__(self, settings: LdapSettings, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        environ = dict(os.environ) if environ is None else environ
        self._service_password = ""
        if settings.bind_dn:
            self._service_password = environ.get(settings.password_env, "")
            if not self._service_password:
                raise ConfigError([f"web.ldap.bind_dn: the environment variable "
                                   f"{settings.password_env} (web.ldap.password_env) holds no "
                                   "password"])
        # ldap3 sets SO_RCVTIMEO from whole seconds
        self._receive_timeout_s = max(1, math.ceil(settings.timeout_s))

    @classmethod
    def of(cls, settings: LdapSettings) -> Directory | None:
        """The directory ``[web.ldap]`` names, or None when directory login is off."""
        return cls(settings) if settings.enabled else None

    def authenticate(self, name: str, password: str) -> DirectoryUser:
        """Bind as the user and map their groups to a role. Raises DirectoryRefused (wrong
        name or password, no mapped group) or DirectoryUnreachable."""
        if not name or not password:
            raise DirectoryRefused("empty name or password")
        try:
            return self._authenticate(name, password)
        except LDAPException as exc:
            raise DirectoryUnreachable(
                f"directory unreachable ({type(exc).__name__})") from exc

    def _authenticate(self, name: str, password: str) -> DirectoryUser:
        s = self.settings
        if s.user_dn_template:
            dn = s.user_dn_template.format(name=escape_rdn(name))
            with self._bound(dn, password) as user_conn:
                return DirectoryUser(dn, self._role(user_conn, dn, name))
        with self._bound(s.bind_dn, self._service_password, service=True) as service:
            dn = self._find_user(service, name)
            with self._bound(dn, password):
                pass
            return DirectoryUser(dn, self._role(service, dn, name))

    def _server(self) -> Any:
        """A Server for one login: ldap3's keeps per-address state, so threads get their own."""
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.settings.ca_file or None)
        return Server(self.settings.url, get_info=NONE, tls=tls,
                      connect_timeout=self.settings.timeout_s)

    @contextmanager
    def _bound(self, dn: str, password: str, *, service: bool = False) -> Iterator[Any]:
        """A connection bound as ``dn``; DirectoryRefused when the directory says no."""
        conn = Connection(self._server(), user=dn, password=password, authentication=SIMPLE,
                          auto_bind=AUTO_BIND_NONE, read_only=True, raise_exceptions=False,
                          receive_timeout=self._receive_timeout_s)
        try:
            conn.open()
            if self.settings.start_tls and not conn.start_tls():
                raise DirectoryUnreachable("directory unreachable (StartTLS refused)")
            if not conn.bind():
                code = conn.result.get("result") if conn.result else None
                if service:
                    raise DirectoryUnreachable(
                        f"the directory refused the service account's bind (result {code})")
                raise DirectoryRefused("wrong password" if code == INVALID_CREDENTIALS
                                       else f"bind refused (result {code})")
            yield conn
        finally:
            # closing a connection the node is done with: a failure here changes nothing
            with suppress(LDAPException):
                conn.unbind()

    def _search(self, conn: Any, base: str, query: str, attributes: list[str],
                limit: int) -> list[dict[str, Any]]:
        conn.search(base, query, search_scope=SUBTREE, attributes=attributes,
                    size_limit=limit, time_limit=self._receive_timeout_s)
        code = conn.result.get("result") if conn.result else None
        # 0 success, 4 sizeLimitExceeded (the entries up to the limit came), 32 noSuchObject
        if code not in (0, 4, 32):
            raise DirectoryUnreachable(f"directory search failed (result {code})")
        return [e for e in conn.response or () if e.get("type") == "searchResEntry"]

    def _find_user(self, service: Any, name: str) -> str:
        s = self.settings
        query = s.user_filter.format(name=escape_filter_chars(name))
        found = self._search(service, s.user_base, query, [], 2)
        if len(found) != 1:
            raise DirectoryRefused("unknown user" if not found else "name not unique")
        return str(found[0]["dn"])

    def _role(self, conn: Any, dn: str, name: str) -> str:
        s = self.settings
        query = s.group_filter.format(dn=escape_filter_chars(dn),
                                      name=escape_filter_chars(name))
        groups = self._search(conn, s.group_base, query, ["cn"], MAX_GROUPS)
        role = map_role(s, [(str(g["dn"]), _cns(g)) for g in groups])
        if role is None:
            raise DirectoryRefused(NO_MAPPED_GROUP)
        return role


def map_role(settings: LdapSettings, groups: list[tuple[str, list[str]]]) -> str | None:
    """The role of the first ``roles`` entry that names one of ``groups`` ((DN, cns) pairs) by
    DN or by cn, without regard to case; None when it names none of them."""
    dns = {_normal_dn(dn) for dn, _ in groups}
    cns = {cn.lower() for _, names in groups for cn in names}
    for entry in settings.roles:
        if "=" in entry.group:
            if _normal_dn(entry.group) in dns:
                return entry.role
        elif entry.group.lower() in cns:
            return entry.role
    return None


def _cns(entry: dict[str, Any]) -> list[str]:
    value = (entry.get("attributes") or {}).get("cn", [])
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _normal_dn(dn: str) -> tuple[tuple[str, str], ...] | str:
    """A DN compared by its attribute types and values, without regard to case or spaces."""
    try:
        return tuple((attr.strip().lower(), value.strip().lower())
                     for attr, value, _ in parse_dn(dn, strip=True))
    except LDAPException:
        return dn.strip().lower()
