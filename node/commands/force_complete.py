"""``dicom-node force-complete``: an operator marks a study complete now."""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK, audit_cli, current_ledger
from node.core.settings import Settings


def add(sub: Any) -> None:
    fc = sub.add_parser("force-complete", help="mark a study complete now")
    fc.add_argument("study_uid", metavar="STUDY_UID")


def run(args: argparse.Namespace, settings: Settings) -> int:
    ledger = current_ledger(settings)
    previous = ledger.force_complete(args.study_uid)
    audit_cli(ledger, settings, "force-complete", "ok", study_id=ledger.study(args.study_uid).id,
              detail=f"from {previous}")
    print(f"study moved from {previous} to COMPLETE")
    return EXIT_OK
