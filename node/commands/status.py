"""``dicom-node status``: the live jobs and the newest finished ones, the quarantine, the outbox.

Every query reads one state's stretch of the ledger's index (keyset pages going back in time):
the cost does not grow with the ledger's history.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from node.commands._common import EXIT_OK, current_ledger, print_table, when
from node.core.jobstate import JobState
from node.core.ledger import FINISHED, LIVE, Ledger, QuarantineRow, StudyRow, utcnow
from node.core.outbox import ItemState, Outbox, OutboxItem
from node.core.settings import Settings


def add(sub: Any) -> None:
    st = sub.add_parser("status", help="show studies and their job states")
    st.add_argument("--json", action="store_true", help="print a JSON list")
    st.add_argument("--quarantine", action="store_true", help="list quarantined objects instead")
    st.add_argument("--outbox", action="store_true",
                    help="list deliveries (outbox items) instead, newest last")
    st.add_argument("--state", type=_states, metavar="STATE[,STATE]",
                    help="only jobs in these states, newest --limit of them (default: every "
                    "live job and the newest finished ones, DONE or DISCARDED)")
    st.add_argument("--since", type=_since, metavar="TIME",
                    help="only studies received since TIME: UTC date/time (2026-12-01, "
                    "2026-12-01T08:00) or an age (90m, 12h, 7d)")
    st.add_argument("--limit", type=_positive, default=50, metavar="N",
                    help="at most N studies per page (default 50; live jobs are all shown)")
    st.add_argument("--before", type=_positive, metavar="JOB_ID",
                    help="the next page: studies older than this job (the line under the "
                    "table gives it)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    ledger = current_ledger(settings)
    outbox = Outbox(ledger.engine)
    if args.quarantine:
        _print_quarantine(ledger.quarantined(), as_json=args.json)
    elif args.outbox:
        _print_outbox(outbox.items(), as_json=args.json)
    else:
        rows, more = _select_studies(ledger, args)
        _print_studies(rows, outbox.counts([r.id for r in rows]),
                       ledger.quarantine_count(), as_json=args.json)
        if more is not None and not args.json:
            print(f"older: dicom-node status {more}")
    return EXIT_OK


def _select_studies(ledger: Ledger, args: argparse.Namespace) -> tuple[list[StudyRow], str | None]:
    """The studies ``status`` shows, and the options of the next (older) page if there may be
    one. Every query reads one state's stretch of the index: no listing of the history."""
    states: tuple[JobState, ...] = args.state or FINISHED
    rows = ledger.page(states, limit=args.limit, since=args.since, before=args.before)
    more = None
    if len(rows) == args.limit:
        more = f"--state {','.join(states)} --before {rows[0].id}"
        more += f" --limit {args.limit}" if args.limit != 50 else ""
        more += f" --since {args.since.isoformat(timespec='seconds')}" if args.since else ""
    if not args.state and args.before is None:
        live = ledger.studies(*LIVE)
        if args.since is not None:
            live = [r for r in live if r.received_at >= args.since]
        rows = sorted(live + rows, key=lambda r: (r.received_at, r.id))
    return rows, more


def _states(text: str) -> tuple[JobState, ...]:
    try:
        return tuple(JobState(name.strip().upper()) for name in text.split(",") if name.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: states are {', '.join(JobState)}") from None


def _since(text: str) -> datetime:
    age = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        return utcnow() - timedelta(**{unit: int(age.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().removesuffix("Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a UTC date/time (2026-12-01T08:00) or an age (12h, 7d)") from None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return int(text)


def _deliveries(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    total = sum(v for k, v in counts.items() if k != "SUPERSEDED")
    text = f"{counts.get('DELIVERED', 0)}/{total} sent"
    for state in ("PENDING", "FAILED"):
        if counts.get(state):
            text += f", {counts[state]} {state.lower()}"
    return text


def _print_studies(rows: list[StudyRow], deliveries: dict[int, dict[str, int]],
                   quarantined: int, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"id": r.id, **r.as_json(), "deliveries": deliveries.get(r.id, {})}
                          for r in rows], indent=2))
        return
    header = ("ID", "STUDY INSTANCE UID", "STATE", "INSTANCES", "RECEIVED (UTC)",
              "COMPLETED (UTC)", "DELIVERIES", "REASON")
    table = [header] + [
        (str(r.id), r.study_instance_uid, r.state.value, str(r.instances),
         when(r.received_at), when(r.completed_at), _deliveries(deliveries.get(r.id, {})),
         r.state_reason or r.completion_reason or "")
        for r in rows
    ]
    print_table(table)
    print(f"\n{len(rows)} studies; {quarantined} quarantined objects"
          + (" (dicom-node status --quarantine)" if quarantined else ""))


def _print_quarantine(rows: list[QuarantineRow], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return
    table = [("ID", "RECEIVED (UTC)", "FROM AE", "FILE (under var/quarantine)", "REASON")] + [
        (str(r.id), when(r.received_at), r.calling_ae_title or "", r.path, r.reason)
        for r in rows
    ]
    print_table(table)


def _print_outbox(rows: list[OutboxItem], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return
    table = [("ITEM", "JOB", "MODEL", "OBJECT", "TO", "STATE", "ATTEMPTS", "NEXT (UTC)",
              "LAST ERROR")] + [
        (str(r.id), str(r.study_id), r.model, r.label, r.destination, r.state.value,
         str(r.attempts), when(r.next_attempt_at) if r.state == ItemState.PENDING else "",
         r.last_error or "")
        for r in rows
    ]
    print_table(table)
