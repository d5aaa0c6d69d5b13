"""``dicom-node import FILE...``: what the console's Upload page does, from the command line.

DICOM files or a zip of them, NIfTI volumes (an MR or CT series) and PNG/JPEG pictures (a
Secondary Capture) enter the receive path as if C-STORE'd (``node.pipeline.ingest``), with
the calling AE title "UPLOAD"; the kind of each file is judged by its content. Prints the
job(s) the objects joined; refused files are quarantined and named.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.commands._common import EXIT_ERROR, EXIT_OK, audit_cli, current_ledger
from node.core.errors import PermanentError
from node.core.settings import Settings
from node.core.spool import open_spool

#: most bytes one file given to the command may have
MAX_FILE_BYTES = 4 * 1024**3


def add(sub: Any) -> None:
    p = sub.add_parser("import", help="take DICOM, zip, NIfTI or PNG/JPEG files in as received")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--patient-id", default="", help="for NIfTI and PNG/JPEG (required there)")
    p.add_argument("--patient-name", default="", help="DICOM form, e.g. Doe^Jane (required "
                   "for NIfTI and PNG/JPEG)")
    p.add_argument("--birth-date", default="", help="YYYYMMDD")
    p.add_argument("--sex", default="", choices=["", "M", "F", "O"])
    p.add_argument("--accession", default="", help="accession number")
    p.add_argument("--study-description", default="")
    p.add_argument("--modality", default="", help="MR (default) or CT for NIfTI; a picture's "
                   "modality (default OT)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.pipeline import ingest

    uploads = []
    for path in args.files:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise PermanentError(f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
            uploads.append(ingest.Upload(path.name, path.read_bytes()))
        except OSError as exc:
            raise PermanentError(f"{path.name} cannot be read ({exc.strerror})") from None
    details = ingest.Details(
        patient_id=args.patient_id, patient_name=args.patient_name, birth_date=args.birth_date,
        sex=args.sex, accession=args.accession, study_description=args.study_description,
        modality=args.modality.upper(),
    )
    ledger = current_ledger(settings)
    spool = open_spool(settings)
    try:
        done = ingest.ingest(ledger, spool, settings, uploads, details)
    except PermanentError as exc:
        audit_cli(ledger, settings, "upload", "refused", detail=str(exc))
        raise
    for job in done.jobs:
        audit_cli(ledger, settings, "upload", "ok", study_id=job,
                  detail=f"{done.stored} stored, {done.duplicates} duplicate(s)")
        print(f"job {job}")
    for row, reason in done.quarantined:
        print(f"quarantined #{row}: {reason}")
    print(f"{done.stored} object(s) stored, {done.duplicates} duplicate(s), "
          f"{len(done.quarantined)} quarantined")
    return EXIT_OK if done.jobs or not done.quarantined else EXIT_ERROR
