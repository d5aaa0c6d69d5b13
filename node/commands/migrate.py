"""``dicom-node migrate``: bring the ledger's schema up to this version."""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK
from node.core.ledger import open_ledger
from node.core.settings import Settings


def add(sub: Any) -> None:
    sub.add_parser("migrate", help="bring the ledger's schema up to this version (serve "
                   "does it at start)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.core.migrations import upgrade

    ledger = open_ledger(settings)
    before, after = upgrade(ledger.engine)
    print(f"ledger already at {after}" if before == after
          else f"ledger upgraded from {before or 'an empty ledger'} to {after}")
    return EXIT_OK
