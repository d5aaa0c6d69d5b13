"""De-identification benchmark: the node's deid stage, pydicom/deid and a plain pydicom pass.

Headers only: no variant decodes pixel data (the script counts pixel decodes and fails if
there is one). Every variant reads each file whole (pydicom.dcmread), changes the header and
writes the file whole; the node writes as its de-identification stage does
(node.pipeline.deid.files.write_instance: the bytes save_as writes, the elements left as read
copied behind headers it packs). See bench/README.md for what is measured and how to read the
output.

    .venv/bin/python bench/deid.py [--instances 300] [--runs 3] [--warmup 10]
                                   [--out bench/results/deid.json]

It needs the venv with the `bench` extra: `pip install -e '.[test,bench]'`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Run as a script, this file's folder comes first on sys.path, and this file (deid.py) would
# hide the deid package: drop that folder, put the repository root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))

from node import __version__ as NODE_VERSION  # noqa: E402
from node.core.keys import DeidKeys, new_secret  # noqa: E402
from node.core.settings import DeidSettings  # noqa: E402
from node.pipeline.deid.deidentify import deidentify  # noqa: E402
from node.pipeline.deid.files import read_instance, write_instance  # noqa: E402
from node.pipeline.deid.profile import load_profile  # noqa: E402
from tests.data import ct_series  # noqa: E402

try:
    from deid.config import DeidRecipe
    from deid.dicom import get_files, replace_identifiers
    from deid.logger import bot as deid_log
except ImportError:
    sys.exit("bench/deid.py needs pydicom/deid: .venv/bin/pip install -e '.[test,bench]'")

#: deid logs at DEBUG level to the terminal unless told otherwise; keep its errors only
#: (deid.logger.message.ERROR = -3; its warnings would be one line per recipe load).
deid_log.level = -3

NODE_TARGET_PER_S = 300.0

#: Type 2 attributes of the CT IOD: kept, emptied.
PLAIN_BLANK = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime",
)
#: Other common identifying attributes: deleted.
PLAIN_DELETE = (
    "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence",
    "IssuerOfPatientID", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup",
    "Occupation", "MedicalRecordLocator", "AdditionalPatientHistory", "PatientComments",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PhysiciansOfRecord",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "RequestingPhysician", "RequestAttributesSequence", "PerformedProcedureStepID",
    "StationName", "DeviceSerialNumber", "ProtocolName", "StudyDescription", "SeriesDescription",
    "ImageComments", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate",
    "InstanceCreationTime",
)
PLAIN_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: A variant processes a list of files into an output folder. It returns the seconds spent in
#: the header step alone (without dcmread and save), or None where it cannot be separated.
Runner = Callable[[Sequence[Path], Path], float | None]


class BenchError(RuntimeError):
    """The benchmark itself failed: no figure is valid."""


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    run: Runner


# ------------------------------------------------------------------------------ the variants


def node_variant(key: str, label: str, settings: DeidSettings, keys: DeidKeys) -> Variant:
    profile = load_profile(settings)  # once, as the node does at start-up

    def run(files: Sequence[Path], out_dir: Path) -> float:
        step = 0.0
        for path in files:
            ds = read_instance(path)
            t0 = time.perf_counter()
            result = deidentify(ds, profile, keys)
            step += time.perf_counter() - t0
            write_instance(result.dataset, out_dir / path.name)
        return step

    return Variant(key, label, run)


def deid_variant(label: str) -> Variant:
    recipe = DeidRecipe()  # no file given: deid's default recipe (deid/data/deid.dicom)

    def run(files: Sequence[Path], out_dir: Path) -> None:
        written = replace_identifiers(
            dicom_files=[str(p) for p in files], deid=recipe, save=True,
            output_folder=str(out_dir),
        )
        if len(written) != len(files):
            raise BenchError(f"deid wrote {len(written)} of {len(files)} files")
        return None

    return Variant("deid", label, run)


def plain_variant(label: str) -> Variant:
    def run(files: Sequence[Path], out_dir: Path) -> float:
        uids: dict[str, str] = {}  # original -> new, so that the study stays one study
        step = 0.0
        for path in files:
            ds = pydicom.dcmread(path)
            t0 = time.perf_counter()
            plain_deidentify(ds, uids)
            step += time.perf_counter() - t0
            ds.save_as(out_dir / path.name, enforce_file_format=True)
        return step

    return Variant("plain", label, run)


def plain_deidentify(ds: Dataset, uids: dict[str, str]) -> None:
    for keyword in PLAIN_BLANK:
        if keyword in ds:
            ds[keyword].value = ""
    for keyword in PLAIN_DELETE:
        if keyword in ds:
            delattr(ds, keyword)
    ds.remove_private_tags()
    for keyword in PLAIN_UIDS:
        if keyword in ds:
            original = str(ds[keyword].value)
            if original not in uids:
                uids[original] = generate_uid()
            ds[keyword].value = uids[original]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"


# ----------------------------------------------------------------------------- measurement


class PixelDecodeCounter:
    """Counts pixel decodes (Dataset.convert_pixel_data, behind ds.pixel_array) of any variant."""

    def __init__(self) -> None:
        self.calls = 0
        original = Dataset.convert_pixel_data

        def counted(ds: Dataset, handler_name: str = "") -> None:
            self.calls += 1
            original(ds, handler_name)

        Dataset.convert_pixel_data = counted  # type: ignore[method-assign]


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def timed_pass(
    variant: Variant, files: Sequence[Path], out_dir: Path
) -> tuple[float, float, float | None]:
    """Wall seconds and CPU seconds of this process (user + system) for the whole pass, and
    seconds of the header step alone (or None)."""
    fresh_dir(out_dir)
    os.sync()  # write back what the previous pass left dirty, so it is not on this one's time
    t0, c0 = time.perf_counter(), time.process_time()
    step = variant.run(files, out_dir)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    written = len(list(out_dir.iterdir()))
    if written != len(files):
        raise BenchError(f"{variant.key}: {written} files written of {len(files)}")
    shutil.rmtree(out_dir)
    return elapsed, cpu, step


def output_check(original: Path, output: Path) -> dict[str, Any]:
    """What one de-identified instance keeps: UIDs, names, private tags; can it be sent?"""
    before, after = pydicom.dcmread(original), pydicom.dcmread(output)
    uids = {}
    for keyword in REQUIRED_UIDS:
        value = after.get(keyword)
        uids[keyword] = ("missing" if value is None
                         else "kept" if value == before.get(keyword) else "replaced")
    return {
        "uids": uids,
        "patient_name": str(after.get("PatientName", "<missing>")),
        "private_tags": sum(1 for elem in after.iterall() if elem.tag.is_private),
        "elements": sum(1 for _ in after.iterall()),
        "sendable": all(uids[k] != "missing" for k in REQUIRED_UIDS),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------------- report


def threads_in_process() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def fmt_check(check: dict[str, Any]) -> str:
    uids = ", ".join(f"{k.removesuffix('UID').removesuffix('Instance')} {v}"
                     for k, v in check["uids"].items())
    return (f"UIDs: {uids}; PatientName {check['patient_name']!r}; "
            f"{check['private_tags']} private tags; "
            f"{'sendable' if check['sendable'] else 'NOT sendable (UIDs missing)'}")


def print_report(report: dict[str, Any]) -> None:
    meta, results = report["meta"], report["results"]
    print()
    print(f"{'variant':<34} {'median/s':>9} {'ms/inst':>8}  {'runs (instances/s)':<22}"
          f" {'header step only (median)':<26} {'per CPU-s':>9}")
    for r in results.values():
        runs = " ".join(f"{x:.0f}" for x in r["runs_per_s"])
        step = r["header_step_ms"]
        step_text = (f"{step['median']:.2f} ms/inst ({1000 / step['median']:.0f}/s)"
                     if step else "n/a (inside deid's call)")
        print(f"{r['label']:<34} {r['median_per_s']:>9.1f} {1000 / r['median_per_s']:>8.2f}  "
              f"{runs:<22} {step_text:<26} {r['median_per_cpu_s']:>9.1f}")
    print()
    print("ratios of medians (above 1: the node is faster)")
    for name, value in report["ratios"].items():
        print(f"  {name:<26} {value:.2f}   per CPU-second: {report['cpu_ratios'][name]:.2f}")
    print()
    for key in ("node-default", "node-options"):
        share = results[key]["header_step_share"]
        print(f"{results[key]['label']}: deidentify() is {share:.0%} of the per-instance time; "
              "the rest is reading and writing the file")
    target = report["target"]
    print(f"issue target: node >= {target['per_s']:.0f} instances/s on one core -> "
          + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in target["met"].items())
          + "; per CPU-second (the process's own user + system time, what a shared machine's "
          "other load does not take away): "
          + ", ".join(f"{k} {'met' if ok else 'NOT met'}"
                      for k, ok in target["met_per_cpu_s"].items()))
    print()
    source = report["input"]
    print(f"output check (one instance from the warm-up; the input has {source['elements']} "
          f"elements, {source['private_tags']} of them private):")
    for key, check in report["output_check"].items():
        print(f"  {key:<13} {fmt_check(check)}")
    print("  note: deid's default recipe removes the UIDs (REMOVE contains:UID), so its output "
          "is not valid DICOM and cannot be sent; the node and the plain pass replace them.")
    print()
    threads = meta["threads_in_process"]
    others = (f"; {threads - 1} more OS thread(s) in the process, idle library pools such as "
              "numpy's OpenBLAS" if threads > 1 else "")
    print(f"machine: {meta['cpus']} cores; the benchmark is single-threaded: one Python thread "
          f"does all the work{others}; no taskset")
    print(f"pixel decodes during the benchmark: {meta['pixel_decodes']} (headers only)")


# ------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10, help="files per variant before timing")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "deid.json")
    return parser.parse_args(argv)


def make_variants() -> list[Variant]:
    keys = DeidKeys.from_secret(base64.b64decode(new_secret()))
    options = DeidSettings(retain_long_modified_dates=True, clean_descriptors=True,
                           retain_patient_characteristics=True)
    return [
        node_variant("node-default", "node, DeidSettings()", DeidSettings(), keys),
        node_variant("node-options", "node, 3 options (dates/desc/chars)", options, keys),
        deid_variant(f"deid {version('deid')}, default recipe"),
        plain_variant(f"plain pydicom, {len(PLAIN_BLANK) + len(PLAIN_DELETE)} keywords"),
    ]


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    decodes = PixelDecodeCounter()
    variants = make_variants()
    series_dir = tmp / "series"
    ct_series(series_dir, args.instances)
    # deid's documented way to list the input; check=True reads every file once to validate it
    # (not timed, as generating the series is not)
    files = sorted(Path(p) for p in get_files(str(series_dir)))
    if len(files) != args.instances:
        raise BenchError(f"get_files found {len(files)} of {args.instances} files")
    size_kb = files[0].stat().st_size / 1000
    print(f"de-identification, headers only: {args.instances}-instance CT series "
          f"({size_kb:.0f} KB/instance), runs: {args.runs}, warm-up: {args.warmup} files/variant")
    print(f"versions: node {NODE_VERSION}, pydicom {pydicom.__version__}, "
          f"deid {version('deid')}, Python {platform.python_version()}")

    source = pydicom.dcmread(files[0])
    source_info = {"elements": sum(1 for _ in source.iterall()),
                   "private_tags": sum(1 for e in source.iterall() if e.tag.is_private)}
    checks = {}
    for v in variants:
        warm_dir = fresh_dir(tmp / f"warm-{v.key}")
        v.run(files[: args.warmup], warm_dir)
        checks[v.key] = output_check(files[0], warm_dir / files[0].name)
        shutil.rmtree(warm_dir)

    rates: dict[str, list[float]] = {v.key: [] for v in variants}
    cpu_rates: dict[str, list[float]] = {v.key: [] for v in variants}
    steps: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(args.runs):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        line = []
        for v in order:
            elapsed, cpu, step = timed_pass(v, files, tmp / f"out-{v.key}")
            rates[v.key].append(len(files) / elapsed)
            cpu_rates[v.key].append(len(files) / cpu)
            if step is not None:
                steps[v.key].append(step / len(files) * 1000)
            line.append(f"{v.key} {rates[v.key][-1]:.0f}/s ({cpu_rates[v.key][-1]:.0f}/CPU-s)")
        print(f"run {r + 1}/{args.runs}: " + ", ".join(line), flush=True)

    if decodes.calls:
        raise BenchError(f"{decodes.calls} pixel decodes: the benchmark is not headers-only")
    report = summarise(args, variants, rates, cpu_rates, steps, checks, decodes.calls)
    report["input"] = source_info
    return report


def summarise(
    args: argparse.Namespace,
    variants: Sequence[Variant],
    rates: dict[str, list[float]],
    cpu_rates: dict[str, list[float]],
    steps: dict[str, list[float]],
    checks: dict[str, dict[str, Any]],
    pixel_decodes: int,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for v in variants:
        med = median(rates[v.key])
        step = {"median": median(steps[v.key]), "runs": steps[v.key]} if steps[v.key] else None
        results[v.key] = {
            "label": v.label,
            "median_per_s": med,
            "runs_per_s": rates[v.key],
            "median_per_cpu_s": median(cpu_rates[v.key]),
            "runs_per_cpu_s": cpu_rates[v.key],
            "header_step_ms": step,
            "header_step_share": step["median"] / (1000 / med) if step else None,
        }
    ratios = {
        f"{node}/{other}": results[node]["median_per_s"] / results[other]["median_per_s"]
        for node in ("node-default", "node-options") for other in ("deid", "plain")
    }
    cpu_ratios = {
        f"{node}/{other}": results[node]["median_per_cpu_s"] / results[other]["median_per_cpu_s"]
        for node in ("node-default", "node-options") for other in ("deid", "plain")
    }
    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "instances": args.instances,
            "runs": args.runs,
            "warmup": args.warmup,
            "cpus": os.cpu_count(),
            "threads_in_process": threads_in_process(),
            "single_threaded": True,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "versions": {"node": NODE_VERSION, "pydicom": pydicom.__version__,
                         "deid": version("deid")},
            "pixel_decodes": pixel_decodes,
        },
        "results": results,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "target": {
            "per_s": NODE_TARGET_PER_S,
            "met": {k: results[k]["median_per_s"] >= NODE_TARGET_PER_S
                    for k in ("node-default", "node-options")},
            "met_per_cpu_s": {k: results[k]["median_per_cpu_s"] >= NODE_TARGET_PER_S
                              for k in ("node-default", "node-options")},
        },
        "output_check": checks,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="dicom-node-bench-deid-"))
    try:
        report = bench(args, tmp)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
