"""``dicom-node quarantine release|delete ID``: what the API's quarantine actions do.

``dicom-node status --quarantine`` lists the objects and their IDs. A release takes the object
in again as a received instance (``node.pipeline.quarantine``); one still refused stays
quarantined with the new reason, and the command exits 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK, audit_cli, current_ledger
from node.core.settings import Settings
from node.core.spool import open_spool


def add(sub: Any) -> None:
    qu = sub.add_parser("quarantine", help="release or delete a quarantined object")
    what = qu.add_subparsers(dest="action", required=True)
    for name, text in (("release", "take the object in again as a received instance"),
                       ("delete", "delete the object's file and its row")):
        one = what.add_parser(name, help=text)
        one.add_argument("id", type=int, metavar="ID",
                         help="its ID (dicom-node status --quarantine)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.pipeline import quarantine as actions

    ledger = current_ledger(settings)
    actions.entry(ledger, args.id)  # an unknown ID is one line before the key is needed
    spool = open_spool(settings)
    if args.action == "release":
        done = actions.release(ledger, spool, settings, args.id)
        audit_cli(ledger, settings, "quarantine-release", "ok", study_id=done.job,
                  detail=f"quarantine #{args.id}: {done.outcome.value}")
        print(f"quarantined object #{args.id} released ({done.outcome.value}), job {done.job}")
    else:
        actions.delete(ledger, spool, args.id)
        audit_cli(ledger, settings, "quarantine-delete", "ok", detail=f"quarantine #{args.id}")
        print(f"quarantined object #{args.id} deleted")
    return EXIT_OK
