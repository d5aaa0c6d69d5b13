"""Ingest benchmark: dcmtk storescu sends a CT series to the node, dcmtk storescp and Orthanc.

The node runs three ways side by side: one receiving process, two, and one with storage
encryption on (``[storage] encrypt = true``), so the cost of encryption is measured in the same
run as the plain node it is compared with.

Everything runs on loopback (127.0.0.1) with ports chosen at run time. See bench/README.md for
what is measured and how to read the output.

    .venv/bin/python bench/ingest.py [--instances 300] [--runs 3] [--out bench/results/ingest.json]
        [--only node-r1,storescp,orthanc] [--baseline DIR] [--growth]

``--baseline DIR`` adds ``node-base``: the node (one receiving process) run from another
checkout of the code (``git worktree add DIR <commit>``, or ``git archive``), through
PYTHONPATH with this venv, so a change is measured against what it changes in the same run.
``--only`` keeps the receivers named (keys as in the JSON); ``--growth`` alone skips the
memory-growth check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node import __version__ as NODE_VERSION  # noqa: E402
from tests.data import ct_series  # noqa: E402

STORESCU, STORESCP, ECHOSCU = "/usr/bin/storescu", "/usr/bin/storescp", "/usr/bin/echoscu"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
NODE_BIN = Path(sys.executable).parent / "dicom-node"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk-based programs crawl without it
MODES = (1, 4)  # associations in parallel
NODE_AE, STORESCP_AE, ORTHANC_AE = "DICOM_NODE", "STORESCP", "ORTHANC"
NODE_TOML = """\
[node]
ae_title = "{ae}"
host = "127.0.0.1"
port = {port}
var_dir = {var}

[completion]
quiet_period_s = 600
max_wait_s = 3600

[scp]
receivers = {receivers}

[storage]
encrypt = {encrypt}

[web]
# the HTTP API's port is fixed by default (8080) and nodes run side by side here
enabled = false
"""


class BenchError(RuntimeError):
    """The benchmark itself failed (a send, a receiver, a check): no figure is valid."""


# ------------------------------------------------------------------ processes and receivers


class Processes:
    """Every long-running process the benchmark starts, each in its own process group."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                list(argv), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers: forked children, receivers
        proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()


@dataclass
class Receiver:
    key: str
    label: str
    ae_title: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    count: Callable[[str], int]  # instances of this study the receiver really stored
    config: Path | None = None


def stop_receiver(procs: Processes, rcv: Receiver) -> None:
    """Stop gracefully (SIGTERM, then SIGKILL after 20 s); say so if the node did not exit 0."""
    procs.stop(rcv.proc)
    if rcv.config is not None and rcv.proc.returncode != 0:
        print(f"warning: {rcv.label} exited with status {rcv.proc.returncode} when stopped "
              f"(-9: killed after 20 s); end of its log:\n{tail(rcv.log, 4)}", file=sys.stderr)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_sockets(port: int) -> int:
    """LISTEN sockets on 127.0.0.1:port: one per receiving process when SO_REUSEPORT is used."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "0A")


def echo_ok(ae_title: str, port: int) -> bool:
    argv = [ECHOSCU, "-aec", ae_title, "127.0.0.1", str(port)]
    return subprocess.run(argv, env=DCMTK_ENV, capture_output=True, timeout=30).returncode == 0


def wait_ready(what: str, proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool],
               timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} was not ready after {timeout:.0f} s:\n{tail(log)}")


def start_node(procs: Processes, work: Path, key: str, receivers: int, *,
               encrypt: bool = False, source: Path | None = None) -> Receiver:
    home = work / key
    home.mkdir()
    port = free_port()
    config = home / "node.toml"
    var = json.dumps(str(home / "var"))  # a JSON string is a valid TOML basic string
    config.write_text(NODE_TOML.format(ae=NODE_AE, port=port, var=var, receivers=receivers,
                                       encrypt=str(encrypt).lower()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE")}
    if source is not None:  # that checkout's node package before the venv's editable one
        env["PYTHONPATH"] = str(source)
    log = home / "node.log"
    proc = procs.start([str(NODE_BIN), "--config", str(config), "serve"], log, env)
    wait_ready(f"the node ({key})", proc, log,
               lambda: listening_sockets(port) >= receivers and echo_ok(NODE_AE, port))

    def count(study_uid: str) -> int:
        argv = [str(NODE_BIN), "--config", str(config), "status", "--json"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise BenchError(f"dicom-node status failed ({out.returncode}):\n{out.stderr}")
        rows = [r for r in json.loads(out.stdout) if r["study_instance_uid"] == study_uid]
        return sum(int(r["instances"]) for r in rows)

    label = (f"node ({receivers} receiver{'s' if receivers > 1 else ''}"
             f"{', encrypted' if encrypt else ''}{', baseline' if source else ''})")
    return Receiver(key, label, NODE_AE, port, proc, log, count, config)


def start_storescp(procs: Processes, work: Path) -> Receiver:
    home = work / "storescp"
    out = home / "out"
    out.mkdir(parents=True)
    port = free_port()
    log = home / "storescp.log"
    # --fork: one process per association, so four associations are received in parallel
    argv = [STORESCP, "--fork", "-aet", STORESCP_AE, "-od", str(out), str(port)]
    proc = procs.start(argv, log, DCMTK_ENV)
    wait_ready("storescp", proc, log, lambda: echo_ok(STORESCP_AE, port))

    def count(study_uid: str) -> int:
        # Every series sent is a new study and storescp names each file <modality>.<SOP UID>:
        # count what the last send wrote, then clear it (after the timing, saves disk).
        del study_uid
        files = list(out.iterdir())
        for f in files:
            f.unlink()
        return len(files)

    return Receiver("storescp", "dcmtk storescp", STORESCP_AE, port, proc, log, count)


def orthanc_get(http_port: int, path: str, data: bytes | None = None) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", data=data)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def start_orthanc(procs: Processes, work: Path) -> Receiver:
    home = work / "orthanc"
    home.mkdir()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench", "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": ORTHANC_AE,
        "StorageDirectory": str(home / "storage"), "IndexDirectory": str(home / "index"),
        "RemoteAccessAllowed": False, "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True, "Plugins": [],
    }
    (home / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = home / "orthanc.log"
    proc = procs.start([ORTHANC, str(home / "orthanc.json")], log, DCMTK_ENV)

    def rest_ok() -> bool:
        try:
            orthanc_get(http_port, "/system")
        except OSError:
            return False
        return echo_ok(ORTHANC_AE, dicom_port)

    wait_ready("Orthanc", proc, log, rest_ok)

    def count(study_uid: str) -> int:
        found = orthanc_get(http_port, "/tools/lookup", study_uid.encode())
        ids = [f["ID"] for f in found if f["Type"] == "Study"]
        return sum(len(orthanc_get(http_port, f"/studies/{i}/instances")) for i in ids)

    version = orthanc_get(http_port, "/system")["Version"]
    return Receiver("orthanc", f"Orthanc {version}", ORTHANC_AE, dicom_port, proc, log, count)


# ------------------------------------------------------------------ sending and checking


def send(files: Sequence[Path], rcv: Receiver, associations: int, logs: Path) -> float:
    """Send with `associations` storescu processes at once; seconds from start to last exit."""
    if rcv.proc.poll() is not None:
        raise BenchError(f"{rcv.label} died (status {rcv.proc.returncode}):\n{tail(rcv.log)}")
    n = len(files)
    k = associations
    chunks = [files[n * i // k : n * (i + 1) // k] for i in range(k)]
    argvs = [[STORESCU, "-aec", rcv.ae_title, "127.0.0.1", str(rcv.port), *map(str, c)]
             for c in chunks]
    paths = [logs / f"storescu-{rcv.key}-{i + 1}.log" for i in range(associations)]
    handles = [p.open("wb") for p in paths]
    running: list[subprocess.Popen[bytes]] = []
    os.sync()  # earlier writes (series, previous receiver) must not be flushed on this one's time
    try:
        start = time.perf_counter()
        for argv, fh in zip(argvs, handles, strict=True):
            running.append(
                subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=DCMTK_ENV))
        codes = [p.wait() for p in running]
        elapsed = time.perf_counter() - start
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for fh in handles:
            fh.close()
    for code, path in zip(codes, paths, strict=True):
        if code != 0:
            raise BenchError(f"storescu to {rcv.label} exited with {code}:\n{tail(path)}")
    return elapsed


def check_stored(rcv: Receiver, study_uid: str, expected: int) -> None:
    got = rcv.count(study_uid)
    if got != expected:
        raise BenchError(f"{rcv.label} stored {got} instances of study {study_uid}, "
                         f"expected {expected}:\n{tail(rcv.log)}")


def study_uid_of(files: Sequence[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


# ------------------------------------------------------------------ memory


def _proc_status(pid: int, field: str) -> int:
    """A kB figure from /proc/PID/status (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    return sorted(found)


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "main"
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "resource_tracker" in cmd:
            return "helper: multiprocessing resource tracker"
        if "multiprocessing" in cmd:
            return "receiver"
    return "other"


def node_memory(root: int, field: str = "VmHWM") -> dict[str, Any]:
    """Per-process `field` (MB) of the node's process tree; peak_mb sums main + receivers."""
    procs: list[dict[str, Any]] = [
        {"pid": p, "role": _role(p, root), "mb": round(_proc_status(p, field) / 1024, 1)}
        for p in [root, *descendants(root)]]
    peak = sum(p["mb"] for p in procs if p["role"] in ("main", "receiver"))
    helpers = sum(p["mb"] for p in procs if p["role"] not in ("main", "receiver"))
    return {"field": field, "peak_mb": round(peak, 1), "helpers_mb": round(helpers, 1),
            "processes": procs}


# ------------------------------------------------------------------ the two phases


def throughput(receivers: list[Receiver], work: Path, instances: int, runs: int
               ) -> dict[str, dict[int, list[float]]]:
    rates: dict[str, dict[int, list[float]]] = {r.key: {m: [] for m in MODES} for r in receivers}
    for run in range(runs):
        order = receivers[run % len(receivers):] + receivers[: run % len(receivers)]
        for mode in MODES:
            series = work / f"series-run{run + 1}-{mode}assoc"
            files = ct_series(series, instances)  # fresh UIDs: the node must not see duplicates
            study = study_uid_of(files)
            done = []
            for rcv in order:
                elapsed = send(files, rcv, mode, work)
                check_stored(rcv, study, instances)
                rates[rcv.key][mode].append(instances / elapsed)
                done.append(f"{rcv.key} {instances / elapsed:.0f}/s")
            print(f"run {run + 1}/{runs}, {mode} assoc: " + ", ".join(done), flush=True)
            shutil.rmtree(series)
    return rates


def memory_growth(procs: Processes, work: Path, sizes: Sequence[int]) -> list[dict[str, Any]]:
    """A fresh node (1 receiver) per study size, so each peak belongs to that size alone."""
    results = []
    for size in sizes:
        series = work / f"series-mem-{size}"
        files = ct_series(series, size)
        study = study_uid_of(files)
        node = start_node(procs, work, f"node-mem-{size}", receivers=1)
        idle = node_memory(node.proc.pid, "VmRSS")
        elapsed = send(files, node, 1, work)
        check_stored(node, study, size)
        peak = node_memory(node.proc.pid)
        stop_receiver(procs, node)
        shutil.rmtree(series)
        shutil.rmtree(work / node.key)
        results.append({"instances": size, "idle_rss_mb": idle["peak_mb"],
                        "peak_mb": peak["peak_mb"], "rate": round(size / elapsed, 1),
                        "processes": peak["processes"]})
        print(f"memory check, {size} instances: peak {peak['peak_mb']:.0f} MB", flush=True)
    return results


# ------------------------------------------------------------------ report


def report(labels: dict[str, str], medians: dict[str, dict[int, float]],
           memory: dict[str, dict[str, Any]], growth: list[dict[str, Any]], meta: dict[str, Any]
           ) -> str:
    out = [f"Ingest on loopback: {meta['instances']} CT instances of 526 KB, dcmtk storescu "
           f"(TCP_NODELAY=1), median of {meta['runs']} run(s), {meta['cpus']} CPUs", "",
           f"{'receiver':<34}{'1 assoc':>10}{'4 assoc':>10}   (instances/s)"]
    for key, label in labels.items():
        out.append(f"{label:<34}" + "".join(f"{medians[key][m]:>10.1f}" for m in MODES))
    out += ["", f"{'ratio':<34}{'1 assoc':>10}{'4 assoc':>10}"]
    for node, peer in _ratios(labels):
        if peer in ("storescp", "orthanc"):
            name = f"{labels[node].replace('receiver', 'rcv')} / {peer}"
        elif peer == "node-r1":
            name = "encrypted / plain (1 rcv)"
        else:
            name = "this / baseline (1 rcv)"
        out.append(f"{name[:33]:<34}" + "".join(
            f"{medians[node][m] / medians[peer][m]:>10.2f}" for m in MODES))
    out += ["", "node peak memory (sum of VmHWM over main + receiving processes)"]
    for key, mem in memory.items():
        parts = ", ".join(f"{p['role']} {p['mb']:.0f}" for p in mem["processes"]
                          if p["role"] in ("main", "receiver"))
        extra = f"; helpers {mem['helpers_mb']:.0f} MB not counted" if mem["helpers_mb"] else ""
        out.append(f"  {labels[key]:<24}{mem['peak_mb']:>6.0f} MB  ({parts}{extra})")
    for g in growth:
        out.append(f"  fresh node, {g['instances']:>5}-instance study: peak {g['peak_mb']:.0f} MB "
                   f"(idle RSS {g['idle_rss_mb']:.0f} MB, {g['rate']:.0f} instances/s)")
    if len(growth) >= 2:
        out.append(f"  growth {growth[0]['instances']} -> {growth[-1]['instances']} instances: "
                   f"{growth[-1]['peak_mb'] - growth[0]['peak_mb']:+.0f} MB")
    return "\n".join(out)


def _ratios(labels: dict[str, str]) -> list[tuple[str, str]]:
    """(node, peer) pairs whose ratio is reported, of the receivers that ran."""
    pairs = [(n, p) for n in labels if n.startswith("node") for p in ("storescp", "orthanc")
             if p in labels]
    pairs += [(n, "node-r1") for n in ("node-r1-enc",) if n in labels and "node-r1" in labels]
    if "node-base" in labels and "node-r1" in labels:
        pairs.append(("node-r1", "node-base"))
    return pairs


def tool_version(argv: Sequence[str]) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).strip().splitlines()[0]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=300, help="instances per series (default 300)")
    p.add_argument("--runs", type=int, default=3, help="rounds; the median is reported (default 3)")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/ingest.json")
    p.add_argument("--growth", type=int, nargs="*", default=[200, 2000], metavar="N",
                   help="study sizes for the memory-growth check (default 200 2000; none: skip)")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also run the node from this checkout (key node-base)")
    p.add_argument("--only", default="", metavar="KEYS",
                   help="comma-separated receivers to run (default: all)")
    args = p.parse_args(argv)
    if args.instances < max(MODES) or args.runs < 1:
        p.error("--instances must be at least 4 and --runs at least 1")
    # Ctrl-C and SIGTERM end the run through the finally block that stops every process
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = {k for k in args.only.split(",") if k}
    result = run_benchmark(args.instances, args.runs, args.growth, args.baseline, only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures written to {args.out}")
    return 0


def run_benchmark(instances: int, runs: int, growth_sizes: Sequence[int],
                  baseline: Path | None = None, only: set[str] | None = None) -> dict[str, Any]:
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="dicom-node-bench-"))
    starts: dict[str, Callable[[], Receiver]] = {
        "node-r1": lambda: start_node(procs, work, "node-r1", 1),
        "storescp": lambda: start_storescp(procs, work),
        "orthanc": lambda: start_orthanc(procs, work),
        "node-r2": lambda: start_node(procs, work, "node-r2", 2),
        "node-r1-enc": lambda: start_node(procs, work, "node-r1-enc", 1, encrypt=True),
    }
    if baseline is not None:
        starts["node-base"] = lambda: start_node(procs, work, "node-base", 1, source=baseline)
    receivers: list[Receiver] = []
    try:
        receivers = [start() for key, start in starts.items() if not only or key in only]
        rates = throughput(receivers, work, instances, runs)
        memory = {r.key: node_memory(r.proc.pid) for r in receivers if r.key.startswith("node")}
        for rcv in receivers:
            stop_receiver(procs, rcv)
        growth = memory_growth(procs, work, growth_sizes)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    by_key = {r.key: r for r in receivers}
    labels = {k: by_key[k].label
              for k in ("node-r1", "node-r2", "node-r1-enc", "node-base", "storescp", "orthanc")
              if k in by_key}
    medians = {k: {m: statistics.median(v[m]) for m in MODES} for k, v in rates.items()}
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "instances": instances,
            "runs": runs, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "node": NODE_VERSION,
            "dcmtk": tool_version([STORESCU, "--version"]), "orthanc": labels.get("orthanc"),
            "baseline": str(baseline) if baseline else None}
    print("\n" + report(labels, medians, memory, growth, meta))
    return {
        "meta": meta,
        "throughput": {
            k: {"label": labels[k]} | {
                f"{m}_assoc": {"median": round(medians[k][m], 1),
                               "runs": [round(x, 1) for x in rates[k][m]]} for m in MODES}
            for k in labels},
        "ratios": {
            f"{n}/{peer}": {f"{m}_assoc": round(medians[n][m] / medians[peer][m], 3)
                            for m in MODES}
            for n, peer in _ratios(labels)},
        "memory": {"throughput_nodes": memory, "growth": growth},
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
