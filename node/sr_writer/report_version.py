"""A new version of a PDF report: the original report with a "Notes" section, and its
Encapsulated PDF instance in the original's series.

A version is the report as the build stage first made it (``pdf.build_pdf``, version 1),
unchanged, followed by one or more "Notes" pages (fpdf2, the report's look and its AI
disclaimer in every footer) that give each note so far with its author's user name and role
and the UTC time, and the version number. The pages are joined with pypdf. The note's words
are drawn as text (nothing in them is read as markup), wrapped to the page; characters outside
Latin-1 are printed as '?', as in the report.

The DICOM instance is a copy of the original report's instance (so it carries the same
patient, study and series, built against the original sources) with its own SOP Instance UID
(the caller derives it from the job and version), Instance Number = version, and content and
creation date/time = when the version was made. Pure: the caller writes and sends it.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fpdf.enums import XPos, YPos
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, TM
from pypdf import PdfReader, PdfWriter

from node.core.contract import AI_DISCLAIMER, MANUFACTURER
from node.sr_writer.pdf import ReportPages, latin1

#: the document title's addition on a version with notes
VERSION_TITLE = "version {n}, with notes"


@dataclass(frozen=True)
class SignedNote:
    """A note as the report prints it: who wrote it, in which role, when (UTC), what."""

    author: str
    role: str
    at: datetime
    text: str


def _notes_pages(notes: Sequence[SignedNote], version: int, algorithm: str,
                 created: datetime) -> bytes:
    pdf = ReportPages(latin1(f"{AI_DISCLAIMER}. Model {algorithm}. Report version {version}."),
                      "Notes page")
    pdf.set_creation_date(created)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, f"Notes (report version {version})", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.set_text_color(80)
    pdf.multi_cell(0, 5, latin1(
        f"Report version {version}, made {created:%Y-%m-%d %H:%M} UTC by {MANUFACTURER}. "
        f"The pages before are the AI result report ({algorithm}) as first issued "
        f"(version 1), unchanged. The notes below were written by the people named, not by "
        f"the AI."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0)
    for n, note in enumerate(notes, start=1):
        pdf.ln(4)
        pdf.set_fill_color(230, 230, 230)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 6, latin1(
            f"Note {n} (version {n + 1}): {note.author} ({note.role}), "
            f"{note.at:%Y-%m-%d %H:%M} UTC"), fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("Helvetica", "", 10)
        pdf.ln(1)
        pdf.multi_cell(0, 5, latin1(note.text), align="L", new_x=XPos.LMARGIN,
                       new_y=YPos.NEXT)
    return bytes(pdf.output())


def build_version_pdf(original: bytes, notes: Sequence[SignedNote], version: int,
                      algorithm: str, created: datetime) -> bytes:
    """Version ``version`` of a report: ``original`` (version 1) and its ``notes`` so far."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(original)))
    writer.append(PdfReader(io.BytesIO(_notes_pages(notes, version, algorithm, created))))
    title = writer.metadata.get("/Title", "AI result report") if writer.metadata else ""
    writer.add_metadata({"/Title": f"{title} ({VERSION_TITLE.format(n=version)})"})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def build_version_instance(original: Dataset, pdf: bytes, version: int,
                           sop_instance_uid: str, created: datetime) -> Dataset:
    """The Encapsulated PDF instance of a report version, in the ``original``'s series."""
    ds = copy.deepcopy(original)
    ds.SOPInstanceUID = sop_instance_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.InstanceNumber = version
    ds.ContentDate = ds.InstanceCreationDate = DA(created.date())
    ds.ContentTime = ds.InstanceCreationTime = TM(created.time())
    title = str(original.get("DocumentTitle", "AI result report"))
    ds.DocumentTitle = f"{title} ({VERSION_TITLE.format(n=version)})"
    ds.EncapsulatedDocument = pdf + b"\x00" * (len(pdf) % 2)
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds
