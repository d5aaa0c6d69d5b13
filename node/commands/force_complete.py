"""``dicom-node force-complete``: an operator marks a study complete now."""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK, current_ledger
from node.core.settings import Settings


def add(sub: Any) -> None:
    fc = sub.add_parser("force-complete", help="mark a study complete now")
    fc.add_argument("study_uid", metavar="STUDY_UID")


def run(args: argparse.Namespace, settings: Settings) -> int:
    previous = current_ledger(settings).force_complete(args.study_uid)
    print(f"study moved from {previous} to COMPLETE")
    return EXIT_OK
