#!/usr/bin/env python3
"""The whole flow on this machine: Orthanc as the PACS, the node, an HL7 listener as the EMR.

Starts Orthanc (Debian's package) with ``orthanc/``'s configuration and routing script, an MLLP
listener that writes every ORU it receives to ``var/demo-run/oru.hl7``, and the node on its
embedded default (SQLite ledger and spool under ``var/demo-run/node``) with the models enabled and
Orthanc and the listener as destinations; writes the demo studies (``scripts/demo_data.py``: the
Colin27 brain MRI and a chest CT phantom, made-up demo patients) and stores them into Orthanc
with dcmtk's storescu, as a modality would. Orthanc forwards each study once it is stable, the
node de-identifies it, runs the models, and sends SEG, SR, SC, KOS and PDF back into the same
study and an ORU^R01 per result to the listener. Prints where to look, then keeps everything
running until Ctrl-C, which stops all it started.

    .venv/bin/python scripts/demo.py            (what `make run` does)
    .venv/bin/python scripts/demo.py --exit-when-done --http-port 18042 ...   (tests, bench)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ORTHANC = "/usr/sbin/Orthanc"
STORESCU = "/usr/bin/storescu"
MODELS = ["brain-mask", "brain-tumor-demo", "lung-ct"]
FINAL = {"DONE", "FAILED", "QUARANTINED", "HELD", "DISCARDED"}


@dataclass
class Ports:
    dicom: int = 4242
    http: int = 8042
    node: int = 11112
    hl7: int = 2575
    #: the node's HTTP API; 0: a free port, chosen at start (tests, bench)
    web: int = 0


@dataclass
class Stack:
    """The processes of one demo run and where they keep their files."""

    root: Path
    ports: Ports
    stable_age_s: int = 5
    quiet_period_s: float = 2.0
    models: list[str] = field(default_factory=lambda: list(MODELS))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def oru_file(self) -> Path:
        return self.root / "oru.hl7"

    @property
    def node_var(self) -> Path:
        return self.root / "node"

    @property
    def node_config(self) -> Path:
        return self.root / "node.toml"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.ports.web:
            self.ports.web = _free_port()
        for name, port in vars(self.ports).items():
            _check_free(name, port)
        self._start_orthanc()
        self._spawn("hl7", [str(VENV_BIN / "dicom-node"), "hl7-listen", "--port",
                            str(self.ports.hl7), "--out", str(self.oru_file)])
        self._write_node_config()
        self._spawn("node", [str(VENV_BIN / "dicom-node"), "--config", str(self.node_config),
                             "serve"])
        self._wait("Orthanc", lambda: self.orthanc("/system") is not None)
        self._wait("the node", lambda: _listening(self.ports.node))
        self._wait("the HL7 listener", lambda: _listening(self.ports.hl7))
        self._wait("the node's API", lambda: self.api("/healthz") == {"status": "ok"})

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.web}"

    def api(self, route: str) -> Any:
        """The node's API without login (only /healthz and /readyz answer so)."""
        with urllib.request.urlopen(self.api_url + route, timeout=10) as r:  # noqa: S310 - http
            return json.loads(r.read())

    def _start_orthanc(self) -> None:
        if not Path(ORTHANC).exists():
            raise SystemExit(f"Orthanc is not installed at {ORTHANC}: run scripts/setup")
        text = "\n".join(line for line in (REPO / "orthanc" / "orthanc.json").read_text()
                         .splitlines() if not line.lstrip().startswith("//"))
        config = json.loads(text)
        config.update(DicomPort=self.ports.dicom, HttpPort=self.ports.http,
                      StableAge=self.stable_age_s, LuaScripts=[str(REPO / "orthanc" / "route.lua")],
                      StorageDirectory=str(self.root / "orthanc"),
                      IndexDirectory=str(self.root / "orthanc"), Plugins=[])
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        self._spawn("orthanc", [ORTHANC, str(path)],
                    env={"DICOM_NODE_PORT": str(self.ports.node), "TCP_NODELAY": "1"})

    def _write_node_config(self) -> None:
        text = (REPO / "orthanc" / "node.toml").read_text()
        text = re.sub(r"(?m)^port = 11112 .*$", f"port = {self.ports.node}", text)
        text = re.sub(r"(?m)^quiet_period_s = .*$", f"quiet_period_s = {self.quiet_period_s}",
                      text)
        text = re.sub(r"(?m)^enabled = .*$", f"enabled = {json.dumps(self.models)}", text)
        text = re.sub(r"(?m)^port = 4242$", f"port = {self.ports.dicom}", text)
        text = text.replace("[node]\n", f"[node]\nvar_dir = {json.dumps(str(self.node_var))}\n", 1)
        text += (
            "\n# The demo's EMR: dicom-node hl7-listen, writing what it receives to a file.\n"
            "[[delivery.hl7]]\nname = \"emr\"\nhost = \"127.0.0.1\"\n"
            f"port = {self.ports.hl7}\nreceiving_application = \"DEMO_EMR\"\n"
            "[hl7]\nsending_facility = \"DEMO_HOSPITAL\"\n"
        )
        if "\n[web]\n" in text:
            text = text.replace("\n[web]\n", f"\n[web]\nport = {self.ports.web}\n", 1)
        else:
            text += ("\n# The node's HTTP API (this machine only).\n"
                     f"[web]\nport = {self.ports.web}\n")
        self.node_config.write_text(text)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True)

    def _wait(self, what: str, ready: Any, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}; see "
                                     f"{self.root / (name + '.log')}")
            with contextlib.suppress(OSError, ValueError):
                if ready():
                    return
            time.sleep(0.2)
        raise SystemExit(f"{what} did not start within {timeout_s:.0f} s")

    def orthanc(self, route: str) -> Any:
        url = f"http://127.0.0.1:{self.ports.http}{route}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    @property
    def ledger(self) -> Path:
        return self.node_var / "ledger.sqlite3"

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows from the node's ledger (SQLite, WAL), read-only and in this process: polling
        with ``dicom-node status`` (a new process importing the whole node) took seconds a
        call on a busy machine and slowed the node itself."""
        if not self.ledger.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                return list(db.execute(sql))
        except sqlite3.OperationalError:  # created but no tables yet, or busy: ask again
            return []

    def status(self) -> list[dict[str, Any]]:
        """The studies as ``dicom-node status --json`` shows them (the fields used here)."""
        return [{"id": i, "study_instance_uid": uid, "state": state, "instances": n,
                 "state_reason": reason, "completion_reason": completion}
                for i, uid, state, reason, completion, n in self._query(
                    "SELECT s.id, s.study_instance_uid, s.state, s.state_reason, "
                    "s.completion_reason, (SELECT count(*) FROM instances i "
                    "WHERE i.study_id = s.id) FROM studies s ORDER BY s.id")]

    def outbox(self) -> list[dict[str, Any]]:
        """Deliveries as ``dicom-node status --outbox --json`` shows them (fields used here)."""
        return [{"job": job, "model": model, "kind": kind, "destination": dest, "state": state,
                 "path": path}
                for job, model, kind, dest, state, path in self._query(
                    "SELECT study_id, model, kind, destination, state, path FROM outbox "
                    "WHERE state != 'SUPERSEDED' ORDER BY id")]

    def push(self, folder: Path) -> None:
        subprocess.run([STORESCU, "+sd", "+r", "+sp", "*.dcm", "-aec", "ORTHANC", "127.0.0.1",
                        str(self.ports.dicom), str(folder)], check=True,
                       env={**os.environ, "TCP_NODELAY": "1"})

    def wait_done(self, studies: int, timeout_s: float,
                  on_change: Callable[[dict[str, Any]], None] | None = None,
                  ) -> list[dict[str, Any]]:
        """Poll the node's status until every study is in a final state; ``on_change`` gets
        each row whose state (or, while receiving, instance count) changed since last time."""
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        seen: dict[int, tuple[str, int]] = {}
        while time.monotonic() < deadline:
            rows = self.status()
            for row in rows:
                now = (row["state"], row["instances"] if row["state"] == "RECEIVING" else 0)
                if on_change is not None and seen.get(row["id"]) != now:
                    on_change(row)
                seen[row["id"]] = now
            if len(rows) >= studies and all(r["state"] in FINAL for r in rows):
                return rows
            time.sleep(0.3)
        raise SystemExit(f"not done within {timeout_s:.0f} s: {[r['state'] for r in rows]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_free(name: str, port: int) -> None:
    if _listening(port):
        raise SystemExit(
            f"port {port} ({name}) is already in use: stop what listens there (Debian's own "
            "Orthanc service: `service orthanc stop`) or choose other ports (--help)")


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@dataclass(frozen=True)
class ModelRow:
    """One line of the result table: a model's result for one study, and where it went."""

    study: str
    model: str
    measurements: str
    triage: str
    delivered: str
    oru: str
    pdf: Path | None


def label(study: dict[str, Any]) -> str:
    """How the demo names a study on screen: its description and made-up patient."""
    return f"{study['study_description']} ({study['name']})"


def _measurements(summary: dict[str, Any]) -> str:
    parts = [f"{m['name']} {m['value']:.1f} {m['unit']}" for m in summary["measurements"][:4]]
    if summary["findings"]:
        top = max(summary["findings"], key=lambda f: f["probability"])
        parts.append(f"{top['meaning']} {100 * top['probability']:.1f} %")
    return ", ".join(parts) or "-"


def _deliveries(items: list[dict[str, Any]]) -> tuple[str, str]:
    """('8/8 to orthanc', 'acknowledged by emr') for one job's and model's outbox items."""
    dicom = [i for i in items if i["kind"] in ("dicom", "stow")]
    hl7 = [i for i in items if i["kind"] == "hl7"]
    done = [i for i in dicom if i["state"] == "DELIVERED"]
    where = ", ".join(sorted({i["destination"] for i in dicom}))
    delivered = f"{len(done)}/{len(dicom)} to {where}" if dicom else "-"
    if not hl7:
        return delivered, "-"
    acked = [i for i in hl7 if i["state"] == "DELIVERED"]
    oru = (f"acknowledged by {', '.join(sorted({i['destination'] for i in acked}))}"
           if len(acked) == len(hl7) else
           f"{len(hl7) - len(acked)} not acknowledged ({hl7[0]['state']})")
    return delivered, oru


def result_rows(stack: Stack, studies: list[dict[str, Any]], rows: list[dict[str, Any]],
                outbox: list[dict[str, Any]]) -> list[ModelRow]:
    """The result table: per study and model, its key result, triage and deliveries."""
    by_uid = {str(s["study_instance_uid"]): s for s in studies}
    table = []
    for row in rows:
        study = by_uid.get(row["study_instance_uid"])
        name = label(study) if study else f"job {row['id']}"
        models = sorted({i["model"] for i in outbox if i["job"] == row["id"]})
        if not models:
            table.append(ModelRow(name, "-", row["state_reason"] or "-", "-", "-", "-", None))
        for model in models:
            items = [i for i in outbox if i["job"] == row["id"] and i["model"] == model]
            # outbox/<study key>/g<generation>/<model>/...; results/ has the same layout
            folder = Path(items[0]["path"]).parent
            summary: dict[str, Any] = {"measurements": [], "findings": [], "triage": "-",
                                       "model": {"version": ""}}
            with contextlib.suppress(OSError, ValueError):
                summary = json.loads((stack.node_var / "results" / folder / "summary.json")
                                     .read_text())
            delivered, oru = _deliveries(items)
            pdf = stack.node_var / "outbox" / folder / "report.pdf"
            table.append(ModelRow(name, f"{model} {summary['model']['version']}".strip(),
                                  _measurements(summary), summary["triage"], delivered, oru,
                                  pdf if pdf.exists() else None))
    return table


def print_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
              .rstrip())


def report(stack: Stack, studies: list[dict[str, Any]], rows: list[dict[str, Any]],
           *, still_running: bool) -> None:
    """The result table, then where to look: every path absolute, every command runnable from
    any folder; Orthanc Explorer only while Orthanc still runs."""
    table = result_rows(stack, studies, rows, stack.outbox())
    print("\nResults:")
    print_table(("STUDY", "MODEL", "TRIAGE", "OBJECTS DELIVERED", "ORU^R01", "KEY RESULT"),
                [(r.study, r.model, r.triage, r.delivered, r.oru, r.measurements)
                 for r in table])
    for row in rows:
        if row["state"] != "DONE":
            print(f"  job {row['id']}: {row['state']} - {row['state_reason']}")
    if any(r.triage not in ("ROUTINE", "-") for r in table):
        print("  (triage above ROUTINE is flagged in the SR, the PDF and the ORU; alerts by "
              "webhook or e-mail go out from delivery.alert_on, and the demo configures none)")
    print()
    if still_running:
        print(f"Orthanc Explorer:  http://127.0.0.1:{stack.ports.http}/app/explorer.html")
    print(f"HL7 ORU messages:  {stack.oru_file}")
    for r in table:
        if r.pdf is not None:
            print(f"PDF report:        {r.pdf}  ({r.study}, {r.model})")
    print(f"Node status:       {VENV_BIN / 'dicom-node'} --config {stack.node_config} status")
    if still_running:
        print(f"Node API:          {stack.api_url}/api/v1/docs  (health: {stack.api_url}/healthz)")
        print(f"API user:          {VENV_BIN / 'dicom-node'} --config {stack.node_config} user add "
              "NAME --role admin  (asks for the password)")
    print(f"Logs:              {stack.root}/*.log")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO / "var" / "demo-run",
                   help="folder for everything this run keeps (default: var/demo-run)")
    p.add_argument("--dicom-port", type=int, default=4242, help="Orthanc's DICOM port")
    p.add_argument("--http-port", type=int, default=8042, help="Orthanc's HTTP port")
    p.add_argument("--node-port", type=int, default=11112, help="the node's DICOM port")
    p.add_argument("--hl7-port", type=int, default=2575, help="the HL7 listener's port")
    p.add_argument("--web-port", type=int, default=8080,
                   help="the node's HTTP API port (0: a free one)")
    p.add_argument("--ct-slices", type=int, default=120, help="slices of the chest CT")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for results")
    p.add_argument("--exit-when-done", action="store_true",
                   help="stop everything once the results are in (for tests)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    sys.path.insert(0, str(REPO / "scripts"))
    from demo_data import write_demo

    stack = Stack(args.root.absolute(), Ports(args.dicom_port, args.http_port, args.node_port,
                                              args.hl7_port, args.web_port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with running(stack):
        data = stack.root / "studies"
        studies = write_demo(data, ct_slices=args.ct_slices, new_uids=True)
        names = {str(s["study_instance_uid"]): label(s) for s in studies}
        started = time.monotonic()

        def say(text: str) -> None:
            print(f"[{time.monotonic() - started:5.1f} s] {text}", flush=True)

        say(f"the node's API answers at {stack.api_url}/healthz (documented at "
            f"{stack.api_url}/api/v1/docs; a user for it: {VENV_BIN / 'dicom-node'} --config "
            f"{stack.node_config} user add NAME --role admin)")
        say("Orthanc, the node and the HL7 listener run; storing "
            + ", ".join(f"{label(s)}, {s['instances']} images" for s in studies)
            + " into Orthanc")
        stack.push(data)
        say(f"stored; Orthanc forwards each study to the node {stack.stable_age_s} s after its "
            "last instance, the node processes it and sends the results back")

        shown: set[tuple[int, str]] = set()

        def changed(row: dict[str, Any]) -> None:
            if (row["id"], row["state"]) in shown:  # more instances while RECEIVING
                return
            shown.add((row["id"], row["state"]))
            name = names.get(row["study_instance_uid"], f"job {row['id']}")
            what = {"RECEIVING": "the node receives it from Orthanc",
                    "COMPLETE": f"{row['instances']} instances, nothing more for "
                                f"{stack.quiet_period_s:g} s ({row['completion_reason']})",
                    }.get(row["state"], row["state_reason"] or "")
            say(f"{name}: {row['state']}" + (f" - {what}" if what else ""))

        rows = stack.wait_done(len(studies), args.timeout, on_change=changed)
        say("all studies done")
        report(stack, studies, rows, still_running=not args.exit_when_done)
        if args.exit_when_done:
            return 0 if all(r["state"] == "DONE" for r in rows) else 1
        print("\nEverything keeps running; Ctrl-C stops it.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
