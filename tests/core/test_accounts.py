"""Accounts, sessions, lockout and the audit trail on SQLite and on the local PostgreSQL."""

from __future__ import annotations

import pytest

from node.core.accounts import Accounts, LoginRefused, Role
from node.core.errors import NodeError
from node.core.ledger import Ledger


def test_login_lockout_sessions_and_audit(ledger: Ledger) -> None:
    accounts = Accounts(ledger.engine, max_failed_logins=2, lockout_s=3600)
    accounts.add_user("op", Role.OPERATOR, "a good password")
    with pytest.raises(NodeError, match="exists already"):
        accounts.add_user("op", Role.ADMIN, "another password")
    opened = accounts.login("op", "a good password", "10.0.0.7")
    session = accounts.session(opened.token)
    assert session is not None and (session.name, session.role) == ("op", Role.OPERATOR)
    assert session.csrf_token == opened.session.csrf_token != opened.token
    for _ in range(2):
        with pytest.raises(LoginRefused) as refused:
            accounts.login("op", "wrong", "10.0.0.8")
        assert not refused.value.locked
    with pytest.raises(LoginRefused) as locked:
        accounts.login("op", "a good password", "10.0.0.7")
    assert locked.value.locked
    assert accounts.session(opened.token) is not None  # a lockout stops logins, not sessions
    accounts.logout(opened.token)
    assert accounts.session(opened.token) is None
    records = accounts.audit_page(limit=10)
    assert [(r["action"], r["outcome"], r["address"]) for r in records] == [
        ("login", "refused", "10.0.0.7"), ("login", "refused", "10.0.0.8"),
        ("login", "refused", "10.0.0.8"), ("login", "ok", "10.0.0.7")]
    assert [r["id"] for r in accounts.audit_page(limit=2, before=records[1]["id"])] == \
        [records[2]["id"], records[3]["id"]]
