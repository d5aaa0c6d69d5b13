"""``dicom-node token add|list|revoke``: API tokens for machines (``Authorization: Bearer``).

``token add`` prints the token once, alone on stdout (``TOKEN=$(dicom-node token add ...)``),
and what it made on stderr; the ledger keeps only its sha256. ``token list`` shows no secret.
Adding and revoking are audit records (address "cli").
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from node.commands._common import EXIT_OK, current_ledger
from node.core.accounts import Accounts, Role
from node.core.api_tokens import ApiTokens
from node.core.errors import NodeError
from node.core.ledger import utcnow
from node.core.settings import Settings


def add(sub: Any) -> None:
    tk = sub.add_parser("token", help="add, list or revoke an API token for a machine")
    tk.add_argument("action", choices=("add", "list", "revoke"))
    tk.add_argument("name", metavar="NAME", nargs="?",
                    help="the token's name, shown as token:NAME in the audit trail")
    tk.add_argument("--role", choices=[r.value for r in Role],
                    help="what the token may do (required for add)")
    tk.add_argument("--expires-days", type=int, metavar="N",
                    help="the token is refused after N days (default: no expiry)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    accounts = Accounts(current_ledger(settings).engine)
    tokens = ApiTokens(accounts)
    if args.action == "list":
        _print_list(tokens)
        return EXIT_OK
    if not args.name:
        raise NodeError(f"token {args.action} needs a NAME")
    if args.action == "add":
        if not args.role:
            raise NodeError("token add needs --role (admin, operator, radiologist or clinician)")
        role = Role(args.role)
        secret = tokens.add(args.name, role, expires_days=args.expires_days)
        expiry = "no expiry" if args.expires_days is None else \
            f"expires in {args.expires_days} days"
        print(f"token {args.name} added ({role}, {expiry}); it is shown once, here:",
              file=sys.stderr)
        print(secret)
        accounts.record(name=None, role=None, address="cli", action="token-add",
                        outcome="ok", detail=f"token:{args.name} ({role})")
    else:
        tokens.revoke(args.name)
        print(f"token {args.name} revoked")
        accounts.record(name=None, role=None, address="cli", action="token-revoke",
                        outcome="ok", detail=f"token:{args.name}")
    return EXIT_OK


def _print_list(tokens: ApiTokens) -> None:
    now = utcnow()
    rows = [("NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED")]
    for t in tokens.list():
        rows.append((t.name, t.role.value, t.state(now), _when(t.created_at),
                     _when(t.expires_at), _when(t.last_used_at)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M")
