"""``dicom-node retry``: re-queue FAILED jobs (their failed deliveries, or the whole job)."""

from __future__ import annotations

import argparse
from typing import Any

from node.commands._common import EXIT_OK, audit_cli, current_ledger
from node.core.jobstate import JobState
from node.core.outbox import Outbox
from node.core.settings import Settings


def add(sub: Any) -> None:
    rt = sub.add_parser("retry", help="re-queue a FAILED job (its failed deliveries)")
    which = rt.add_mutually_exclusive_group(required=True)
    which.add_argument("job", nargs="?", metavar="JOB_ID",
                       help="the job's ID (status' ID column) or its Study Instance UID")
    which.add_argument("--all-failed", action="store_true", help="every FAILED job")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.pipeline.deliver.stage import retry_job

    ledger = current_ledger(settings)
    outbox = Outbox(ledger.engine)
    if args.all_failed:
        jobs = ledger.studies(JobState.FAILED)
        if not jobs:
            print("no FAILED jobs")
    else:
        jobs = [ledger.study_by_id(int(args.job)) if args.job.isdigit()
                else ledger.study(args.job)]
    for job in jobs:
        done = retry_job(ledger, outbox, job)
        audit_cli(ledger, settings, "retry", "ok", study_id=job.id, detail=done)
        print(done)
    return EXIT_OK
