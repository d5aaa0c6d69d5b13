"""The ``dicom-node`` command."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from node import __version__
from node.app import open_deid, open_ledger, serve
from node.batch import deidentify_files
from node.config import Settings, load_settings
from node.errors import ConfigError, NodeError
from node.jobstate import JobState
from node.ledger import FINISHED, LIVE, Ledger, QuarantineRow, StudyRow, utcnow
from node.logs import setup_logging
from node.outbox import ItemState, Outbox, OutboxItem
from node.pipeline.deid.keys import write_key_file
from node.pseudonyms import PseudonymStore

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicom-node",
        description="A DICOM node: receives studies, runs AI on them, returns the results.",
    )
    p.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    p.add_argument(
        "--config", metavar="PATH", default=os.environ.get("DICOM_NODE_CONFIG"),
        help="TOML settings file (default: $DICOM_NODE_CONFIG, else built-in defaults)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the node (receive, complete studies, process)")
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
    sub.add_parser("migrate", help="bring the ledger's schema up to this version (serve "
                   "does it at start)")
    rt = sub.add_parser("retry", help="re-queue a FAILED job (its failed deliveries)")
    which = rt.add_mutually_exclusive_group(required=True)
    which.add_argument("job", nargs="?", metavar="JOB_ID",
                       help="the job's ID (status' ID column) or its Study Instance UID")
    which.add_argument("--all-failed", action="store_true", help="every FAILED job")
    hl = sub.add_parser("hl7-listen", help="a minimal MLLP listener that writes what it receives")
    hl.add_argument("--host", default="127.0.0.1")
    hl.add_argument("--port", type=int, default=2575)
    hl.add_argument("--out", required=True, metavar="FILE", help="file the messages are added to")
    hl.add_argument("--mode", default="AA",
                    choices=["AA", "AE", "AR", "silent", "drop", "garbage", "wrong-id", "cut",
                             "hangup", "flood"],
                    help="how to answer (default AA: accept; the last five play a broken EMR)")
    cc = sub.add_parser("check-config", help="find every problem serve would refuse to start "
                        "with, one line each (nothing is started)")
    cc.add_argument("--connect", action="store_true",
                    help="also connect to the database and C-ECHO or reach every destination")
    fc = sub.add_parser("force-complete", help="mark a study complete now")
    fc.add_argument("study_uid", metavar="STUDY_UID")
    de = sub.add_parser(
        "deidentify", help="de-identify DICOM files or folders with the configured profile"
    )
    de.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive)")
    de.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    inf = sub.add_parser("infer", help="run one model on DICOM files or folders, offline")
    inf.add_argument("--model", required=True, metavar="NAME", help="a folder under models/")
    inf.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive)")
    inf.add_argument("--out", required=True, metavar="DIR", help="folder for summary.json")
    kg = sub.add_parser("keygen", help="create a new de-identification key file")
    kg.add_argument("--out", required=True, metavar="PATH")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _run(args, settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except NodeError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        print(f"dicom-node: the ledger database cannot be used ({type(exc).__name__}: "
              f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]})", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # the machine said no (disk, permissions): one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dicom-node: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "check-config":
        return _check_config(settings, connect=args.connect)
    if args.command == "keygen":
        write_key_file(Path(args.out))
        print(f"wrote a new de-identification key to {args.out} (owner-only); keep a backup")
        return EXIT_OK
    if args.command == "deidentify":
        return _deidentify(settings, [Path(p) for p in args.inputs], Path(args.out))
    if args.command == "infer":
        from node.infer import run_infer, summary, write_results, write_summary  # torch, highdicom

        run = run_infer(settings, args.model, [Path(p) for p in args.inputs])
        path = write_summary(run, Path(args.out))
        objects = write_results(run, Path(args.out))
        print(json.dumps(summary(run)["measurements"] or summary(run)["findings"]))
        print(f"summary and {len(objects)} result files written to {path.parent}")
        return EXIT_OK
    if args.command == "serve":
        setup_logging(settings.node.log_level)
        serve(settings)
        return EXIT_OK
    if args.command == "hl7-listen":
        from node.hl7.listener import main as listen

        return listen(["--host", args.host, "--port", str(args.port), "--out", args.out,
                       "--mode", args.mode])
    if args.command == "migrate":
        return _migrate(settings)
    return _ledger_command(args, settings)


def _migrate(settings: Settings) -> int:
    from node.migrations import upgrade

    ledger = open_ledger(settings)
    before, after = upgrade(ledger.engine)
    print(f"ledger already at {after}" if before == after
          else f"ledger upgraded from {before or 'an empty ledger'} to {after}")
    return EXIT_OK


def _check_config(settings: Settings, *, connect: bool) -> int:
    """What serve would refuse, without starting it (``node.preflight``)."""
    from node.preflight import preflight

    problems = preflight(settings, connect=connect)
    if problems:
        raise ConfigError(problems)
    d = settings.delivery
    destinations = sum(len(x) for x in (d.dicom, d.stow, d.hl7, d.webhooks, d.email))
    print(f"config OK ({settings.source}): var_dir {settings.var_path}, ledger "
          f"{settings.database_url.split(':', 1)[0]}, {len(settings.models.enabled)} models "
          f"loaded, {destinations} destinations"
          + (" (database and destinations answered)" if connect else ""))
    return EXIT_OK


def _ledger_command(args: argparse.Namespace, settings: Settings) -> int:
    from node.migrations import require_current

    ledger = open_ledger(settings)
    require_current(ledger.engine)
    outbox = Outbox(ledger.engine)
    if args.command == "status":
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
    if args.command == "retry":
        return _retry(ledger, outbox, args)
    if args.command == "force-complete":
        previous = ledger.force_complete(args.study_uid)
        print(f"study moved from {previous} to COMPLETE")
        return EXIT_OK
    raise AssertionError(args.command)


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


def _deidentify(settings: Settings, inputs: list[Path], out: Path) -> int:

    profile, keys = open_deid(settings, create_default_key=False)
    store = PseudonymStore(open_ledger(settings, create=True).engine, keys)
    summary = deidentify_files(inputs, out, profile, keys, store)
    for line in summary.refusals:
        print(line, file=sys.stderr)
    print(f"{summary.written} de-identified into {out}; {len(summary.refusals)} refused; "
          f"profile {profile.digest[:12]} ({', '.join(profile.options) or 'no options'})")
    return EXIT_OK if not summary.refusals else EXIT_ERROR


def _retry(ledger: Ledger, outbox: Outbox, args: argparse.Namespace) -> int:
    from node.delivery import retry_job

    if args.all_failed:
        jobs = ledger.studies(JobState.FAILED)
        if not jobs:
            print("no FAILED jobs")
    else:
        jobs = [ledger.study_by_id(int(args.job)) if args.job.isdigit()
                else ledger.study(args.job)]
    for job in jobs:
        print(retry_job(ledger, outbox, job))
    return EXIT_OK


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
         _when(r.received_at), _when(r.completed_at), _deliveries(deliveries.get(r.id, {})),
         r.state_reason or r.completion_reason or "")
        for r in rows
    ]
    _print_table(table)
    print(f"\n{len(rows)} studies; {quarantined} quarantined objects"
          + (" (dicom-node status --quarantine)" if quarantined else ""))


def _print_quarantine(rows: list[QuarantineRow], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return
    table = [("ID", "RECEIVED (UTC)", "FROM AE", "FILE (under var/quarantine)", "REASON")] + [
        (str(r.id), _when(r.received_at), r.calling_ae_title or "", r.path, r.reason)
        for r in rows
    ]
    _print_table(table)


def _print_outbox(rows: list[OutboxItem], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return
    table = [("ITEM", "JOB", "MODEL", "OBJECT", "TO", "STATE", "ATTEMPTS", "NEXT (UTC)",
              "LAST ERROR")] + [
        (str(r.id), str(r.study_id), r.model, r.label, r.destination, r.state.value,
         str(r.attempts), _when(r.next_attempt_at) if r.state == ItemState.PENDING else "",
         r.last_error or "")
        for r in rows
    ]
    _print_table(table)


def _print_table(table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _when(value: object) -> str:
    return "" if value is None else str(value)[:19]


if __name__ == "__main__":
    sys.exit(main())
