"""``dicom-node deidentify``: files and folders de-identified offline, with the node's profile.

For research export and to let anyone inspect the profile's effect: the same stage loop as the
pipeline (``node.pipeline.deid.stage.deidentify_into``), the same keys (so pseudonyms match the
node's), and the pseudonyms stored encrypted in the node's ledger. Output files are named by
their new SOP Instance UID: no identifiers in names. A file that is not DICOM, or that may carry
burned-in text without a pixel rule, is refused with a reason that names the file's position,
never its content.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from node.commands._common import EXIT_ERROR, EXIT_OK
from node.commands._inputs import input_files
from node.core.pseudonyms import PseudonymStore
from node.core.settings import Settings


def add(sub: Any) -> None:
    de = sub.add_parser(
        "deidentify", help="de-identify DICOM files or folders with the configured profile"
    )
    de.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive)")
    de.add_argument("--out", required=True, metavar="DIR", help="folder for the results")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_deid
    from node.core.ledger import open_ledger
    from node.pipeline.deid.stage import deidentify_into

    out = Path(args.out)
    profile, keys = open_deid(settings, create_default_key=False)
    store = PseudonymStore(open_ledger(settings, create=True).engine, keys)
    out.mkdir(parents=True, exist_ok=True)
    files = dict(enumerate(input_files([Path(p) for p in args.inputs]), start=1))

    def save(number: int, ds: pydicom.Dataset) -> None:
        name = str(ds.get("SOPInstanceUID", "")) or f"object-{number:06d}"
        ds.save_as(out / f"{name}.dcm", enforce_file_format=True)

    done = deidentify_into(((n, _reader(p)) for n, p in files.items()), profile, keys, save,
                           strict=False)
    store.save(done.pseudonyms)
    refusals = sorted(
        [(n, "not a DICOM file" if isinstance(exc, InvalidDicomError)
          else f"cannot be de-identified ({type(exc).__name__})") for n, exc in done.unusable]
        + [(n, f"refused: {reason}") for n, reason in done.burned_in])
    for number, reason in refusals:
        print(f"input {number}: {reason}", file=sys.stderr)
    print(f"{len(done.written)} de-identified into {out}; {len(refusals)} refused; "
          f"profile {profile.digest[:12]} ({', '.join(profile.options) or 'no options'})")
    return EXIT_OK if not refusals else EXIT_ERROR


def _reader(path: Path) -> Callable[[], pydicom.Dataset]:
    return lambda: pydicom.dcmread(path)
