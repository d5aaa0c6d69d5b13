"""The report a doctor downloads: a PDF (fpdf2) and its DICOM Encapsulated PDF instance.

The PDF names the patient and study as the ORIGINAL source instances do, the model and its
intended use, the result (a classifier's one finding and the probability of each class,
measurements with units and, where the model estimated one, their interval, triage, a quality
flag in red) and the key images (PNG thumbnails of the SC images, see
``sc.thumbnail``), under a prominent AI disclaimer that is repeated in every page's footer. Text
uses the PDF core font Helvetica (nothing to install): characters outside Latin-1 are printed as
'?'. The bytes depend only on
the context (creation date ``ctx.created``), so a retried job yields the same document.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace
from highdicom.base import SOPClass
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian
from pydicom.valuerep import DT, PersonName

from node.core.contract import (
    AI_DISCLAIMER,
    MANUFACTURER,
    Measurement,
    ResultContext,
    classification,
)
from node.sr_writer.common import SERIES_NUMBERS, SOFTWARE_VERSIONS
from node.sr_writer.identity import node_attributes, stamp
from node.sr_writer.render import Thumbnail, format_probability, format_quantity
from node.sr_writer.sc import BANNER_TEXT, finding_name

TITLE = "AI result report"
THUMBNAILS_PER_ROW = 4
_RED = (170, 0, 0)
_HEADINGS = FontFace(emphasis="BOLD", fill_color=(230, 230, 230))


def latin1(text: object) -> str:
    """``text`` as the core font prints it: characters outside Latin-1 become '?'."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


def _person(value: object) -> str:
    """'Family, Given Middle' from a DICOM person name ('' stays '')."""
    pn = PersonName(str(value)) if value else None
    if pn is None:
        return ""
    given = " ".join(p for p in (pn.given_name, pn.middle_name) if p)
    return ", ".join(p for p in (pn.family_name, given) if p) or str(value)


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


class ReportPages(FPDF):
    """The report's pages: A4, its margins, and the AI disclaimer and page number in every
    footer (``page_label``: "Page", or "Notes page" on a report version's notes)."""

    def __init__(self, footer_text: str, page_label: str = "Page") -> None:
        super().__init__(format="A4")
        self._footer_text = footer_text
        self._page_label = page_label
        self.set_margins(12, 12, 12)
        self.set_auto_page_break(True, margin=22)

    def footer(self) -> None:
        self.set_y(-18)
        self.set_font("Helvetica", "B", 8)
        self.set_text_color(*_RED)
        self.multi_cell(0, 4, self._footer_text, align="C", new_x=XPos.LMARGIN,
                        new_y=YPos.NEXT)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(80)
        self.cell(0, 4, f"{self._page_label} {self.page_no()}/{{nb}}", align="C")

    def heading(self, text: str) -> None:
        self.ln(3)
        self.set_font("Helvetica", "B", 12)
        self.set_text_color(0)
        self.cell(0, 7, latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font("Helvetica", "", 9)

    def rows(self, rows: Sequence[Sequence[str]], widths: Sequence[float],
             headings: bool = False) -> None:
        """A table; with ``headings`` its first row is the header."""
        self.set_font("Helvetica", "", 9)
        with self.table(col_widths=tuple(widths), text_align="LEFT", line_height=5,
                        first_row_as_headings=headings, headings_style=_HEADINGS) as table:
            for values in rows:
                row = table.row()
                for value in values:
                    row.cell(latin1(value))

    def paragraph(self, text: str) -> None:
        self.multi_cell(0, 5, latin1(text), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _title(pdf: ReportPages, ctx: ResultContext) -> None:
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, latin1(f"{TITLE}: {ctx.algorithm}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.set_text_color(80)
    pdf.cell(0, 5, f"Created {ctx.created:%Y-%m-%d %H:%M} by {MANUFACTURER} "
             f"{SOFTWARE_VERSIONS}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_fill_color(255, 235, 235)
    pdf.set_draw_color(*_RED)
    pdf.set_text_color(*_RED)
    pdf.set_font("Helvetica", "B", 12)
    pdf.multi_cell(0, 7, f"{BANNER_TEXT}\n{AI_DISCLAIMER}.", border=1, align="C", fill=True,
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT, padding=2)
    pdf.set_text_color(0)
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)


def _patient(pdf: ReportPages, source: Dataset) -> None:
    pdf.heading("Patient and study")
    series = " ".join(str(source.get(k, "")) for k in ("Modality", "SeriesDescription"))
    pdf.rows([("Patient name", _person(source.get("PatientName"))),
              ("Patient ID", str(source.get("PatientID", ""))),
              ("Birth date, sex", f"{_date(source.get('PatientBirthDate'))} "
                                  f"{source.get('PatientSex', '')}".strip()),
              ("Study date", _date(source.get("StudyDate")) or "not stated"),
              ("Accession number", str(source.get("AccessionNumber", "")) or "not stated"),
              ("Study description", str(source.get("StudyDescription", ""))),
              ("Series analysed", series.strip())], widths=(1, 3))


def _model(pdf: ReportPages, ctx: ResultContext) -> None:
    m = ctx.manifest
    pdf.heading("AI model")
    pdf.rows([("Model", f"{m.name} {m.version} ({m.task})"), ("What it does", m.summary),
              ("Intended use", m.intended_use or "not stated")], widths=(1, 3))


def _summary(ctx: ResultContext) -> str:
    r, lines = ctx.result, []
    if r.segments:
        lines.append(f"Segmented: {', '.join(s.name for s in r.segments)} "
                     "(contours on the key images).")
    classes = classification(r)
    if classes is not None:
        lines.append(f"Finding: {finding_name(ctx, classes.finding)} (probability "
                     f"{format_probability(classes.finding.probability)}); the other classes "
                     "were not found (their probabilities below).")
    rule = ctx.manifest.triage
    basis = [m for m in r.measurements if m.name == rule.measurement]
    value = format_quantity(basis[0].value, basis[0].unit).replace(" ", "\u00a0") if basis else ""
    why = (f" ({rule.measurement} {value}; PRIORITY "
           f"above {rule.priority_above:g}, URGENT above {rule.urgent_above:g})") if basis else ""
    lines.append(f"Triage category: {r.triage.value}{why}.")
    return " ".join(lines)


def measured_value(m: Measurement) -> str:
    """The value with its interval, e.g. '1948.4 mL (95% range 1930.4-1968.4 mL, 8 flip
    passes)'."""
    value = format_quantity(m.value, m.unit)
    i = m.interval
    if i is None:
        return value
    return (f"{value} ({100.0 * i.level:g}% range {format_quantity(i.lower, '').strip()}-"
            f"{format_quantity(i.upper, m.unit)}, {i.samples_text})")


def _quality(pdf: ReportPages, ctx: ResultContext) -> None:
    """The model's quality flag in red, and what a measurement's interval means."""
    r = ctx.result
    if r.quality is not None:
        pdf.set_text_color(*_RED)
        pdf.set_font("Helvetica", "B", 9)
        pdf.paragraph(f"Quality flag: {r.quality.flag.upper()}. The model reports that "
                      f"{r.quality.reason}: review the result with particular care.")
        pdf.set_font("Helvetica", "", 9)
        pdf.set_text_color(0)
    methods = sorted({m.interval.method_text for m in r.measurements if m.interval})
    if methods:
        pdf.paragraph(f"A range is the spread of the model's repeated passes ({'; '.join(methods)}"
                      "): how much its answer moves when the images are shown to it changed, "
                      "not a confidence interval of the true value.")


def _results(pdf: ReportPages, ctx: ResultContext) -> None:
    r = ctx.result
    pdf.heading("Result")
    pdf.paragraph(_summary(ctx))
    _quality(pdf, ctx)
    classes = classification(r)
    if classes is not None:
        # one finding; every class's probability, the finding's first, marked as such
        pdf.heading("Probability of each class")
        per_class = [("Class", "Code", "Probability", "Result")] + [
            (finding_name(ctx, f), f"{f.concept.scheme} {f.concept.value}",
             format_probability(f.probability),
             "finding" if f is classes.finding else "not found")
            for f in (classes.finding, *sorted(classes.others, key=lambda f: -f.probability))]
        pdf.rows(per_class, widths=(5, 3, 1.5, 1.5), headings=True)
    if r.measurements:
        names = {s.label: s.name for s in r.segments}
        pdf.heading("Measurements")
        rows = [("Measurement", "Value", "Region")] + [
            (m.name, measured_value(m), names.get(m.segment_label or -1, ""))
            for m in r.measurements]
        wide = any(m.interval for m in r.measurements)  # room for the value's range
        pdf.rows(rows, widths=(3, 4, 2) if wide else (4, 2, 2), headings=True)


def _key_images(pdf: ReportPages, thumbnails: Sequence[Thumbnail]) -> None:
    if not thumbnails:
        return
    pdf.heading("Key images (AI overlay burned in)")
    width = (pdf.epw - 4 * (THUMBNAILS_PER_ROW - 1)) / THUMBNAILS_PER_ROW
    for start in range(0, len(thumbnails), THUMBNAILS_PER_ROW):
        row = thumbnails[start:start + THUMBNAILS_PER_ROW]
        heights = [width * _png_size(t.png)[1] / _png_size(t.png)[0] for t in row]
        if pdf.get_y() + max(heights) + 10 > pdf.page_break_trigger:
            pdf.add_page()
        top = pdf.get_y()
        for n, thumb in enumerate(row):
            x = pdf.l_margin + n * (width + 4)
            pdf.image(io.BytesIO(thumb.png), x=x, y=top, w=width, h=heights[n])
            pdf.set_xy(x, top + heights[n] + 1)
            pdf.set_font("Helvetica", "", 7)
            pdf.multi_cell(width, 3.5, latin1(thumb.caption), align="C")
        pdf.set_xy(pdf.l_margin, top + max(heights) + 10)


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def build_pdf(ctx: ResultContext, thumbnails: Sequence[Thumbnail]) -> bytes:
    """The report as PDF bytes (A4, usually one or two pages)."""
    pdf = ReportPages(latin1(f"{AI_DISCLAIMER}. Model {ctx.algorithm}."))
    pdf.set_creation_date(ctx.created)
    pdf.set_title(f"{TITLE}: {ctx.algorithm}")
    pdf.set_author(MANUFACTURER)
    pdf.set_creator(f"{MANUFACTURER} {SOFTWARE_VERSIONS}")
    pdf.add_page()
    _title(pdf, ctx)
    _patient(pdf, ctx.sources[0])
    _model(pdf, ctx)
    _results(pdf, ctx)
    _key_images(pdf, thumbnails)
    return bytes(pdf.output())


def build_encapsulated_pdf(ctx: ResultContext, pdf: bytes) -> Dataset:
    """An Encapsulated PDF Storage instance of ``pdf`` in the sources' study, own series."""
    source = ctx.sources[0]
    created = ctx.created
    ds = SOPClass(
        study_instance_uid=source.StudyInstanceUID, series_instance_uid=ctx.uid("PDF-series"),
        series_number=SERIES_NUMBERS["PDF"], sop_instance_uid=ctx.uid("PDF"),
        sop_class_uid=EncapsulatedPDFStorage, instance_number=1, modality="DOC",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **node_attributes(ctx, "report"),
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    stamp(ds, ctx, source)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"  # the report names the patient
    ds.AcquisitionDateTime = DT(created)
    ds.DocumentTitle = f"{TITLE}: {ctx.algorithm} (needs review)"
    ds.ConceptNameCodeSequence = [CodedConcept.from_code(codes.LN.DiagnosticImagingReport)]
    ds.VerificationFlag = "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + b"\x00" * (len(pdf) % 2)
    ds.EncapsulatedDocumentLength = len(pdf)
    refs = []
    for src in ctx.sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        refs.append(ref)
    ds.SourceInstanceSequence = refs
    return ds
