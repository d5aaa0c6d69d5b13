"""``dicom-node user add|passwd|disable NAME``: the HTTP API's local accounts.

The password is read from a prompt (twice) on a terminal, else one line of stdin: never from
the command line, where other users see it in the process list and the shell keeps it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from node.commands._common import EXIT_OK, current_ledger
from node.core.accounts import Accounts, Role
from node.core.errors import NodeError
from node.core.settings import Settings

MIN_PASSWORD = 12


def add(sub: Any) -> None:
    us = sub.add_parser("user", help="add a user of the web API, change a password, disable one")
    us.add_argument("action", choices=("add", "passwd", "disable"))
    us.add_argument("name", metavar="NAME")
    us.add_argument("--role", choices=[r.value for r in Role],
                    help="the user's role (required for add; passwd may change it)")


def _password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise NodeError("the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < MIN_PASSWORD:
        raise NodeError(f"a password has at least {MIN_PASSWORD} characters")
    return first


def run(args: argparse.Namespace, settings: Settings) -> int:
    role = Role(args.role) if args.role else None
    if args.action == "add" and role is None:
        raise NodeError("user add needs --role (admin, operator, radiologist or clinician)")
    accounts = Accounts(current_ledger(settings).engine)
    if args.action == "add":
        assert role is not None
        accounts.add_user(args.name, role, _password())
        print(f"user {args.name} added ({role})")
    elif args.action == "passwd":
        accounts.set_password(args.name, _password(), role)
        print(f"user {args.name}: password changed, sessions ended")
    else:
        accounts.disable(args.name)
        print(f"user {args.name} disabled, sessions ended")
    return EXIT_OK
