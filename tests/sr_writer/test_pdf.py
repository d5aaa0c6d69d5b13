"""The PDF report and its Encapsulated PDF instance, on real model results.

The PDF is read back with poppler (pdftotext, pdfinfo, pdfimages, pdftoppm) as a doctor's viewer
would show it; the DICOM instance is validated by dciodvfy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.valuerep import PersonName

from node.core.contract import AI_DISCLAIMER, ResultContext
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.pdf import build_encapsulated_pdf, build_pdf
from node.sr_writer.sc import BANNER_TEXT, build_sc, thumbnail
from tests.sr_writer.conftest import dciodvfy

CONTEXTS = ["brain_ctx", "lung_ctx", "tumor_ctx"]
ACCEPTED_WARNINGS = (  # values copied from the chest phantom's source as they are there
    "needed to build DICOMDIR",  # empty Study Date/Time/ID
    "Retired Person Name form",  # Patient's Name 'CQ500-CT-310' has no '^'
)


def poppler(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"poppler's {tool} is not installed: apt-get install -y poppler-utils")
    return path


@pytest.fixture(params=CONTEXTS)
def ctx(request: pytest.FixtureRequest) -> ResultContext:
    value: ResultContext = request.getfixturevalue(request.param)
    return value


def _report(ctx: ResultContext, tmp_path: Path) -> tuple[bytes, Path]:
    pdf = build_pdf(ctx, [thumbnail(ds) for ds in build_sc(ctx)])
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return pdf, path


def _text(path: Path) -> str:
    out = subprocess.run([poppler("pdftotext"), str(path), "-"], capture_output=True,
                         text=True, check=True).stdout
    return " ".join(out.split())


@pytest.mark.slow
def test_pdf_says_what_the_doctor_needs(ctx: ResultContext, tmp_path: Path) -> None:
    pdf, path = _report(ctx, tmp_path)
    assert pdf.startswith(b"%PDF-")
    text = _text(path)
    source = ctx.sources[0]
    assert AI_DISCLAIMER in text and BANNER_TEXT in text
    assert f"{ctx.manifest.name} {ctx.manifest.version}" in text
    assert " ".join(ctx.manifest.intended_use.split()[:4]) in text
    name = PersonName(str(source.PatientName))
    shown = f"{name.family_name}, {name.given_name}" if name.given_name else name.family_name
    assert shown in text and str(source.PatientID) in text
    if source.StudyDate:
        assert f"{source.StudyDate[:4]}-{source.StudyDate[4:6]}-{source.StudyDate[6:]}" in text
    for m in ctx.result.measurements:
        assert f"{m.name} {m.value:.1f} {m.unit}" in text, m.name
    for f in ctx.result.findings:
        if f.probability >= 0.001:
            assert f"{100 * f.probability:.1f} %" in text
    assert f"Triage category: {ctx.result.triage.value}" in text
    info = subprocess.run([poppler("pdfinfo"), str(path)], capture_output=True, text=True,
                          check=True).stdout
    pages = int(next(ln.split()[-1] for ln in info.splitlines() if ln.startswith("Pages:")))
    assert 1 <= pages <= 2
    images = subprocess.run([poppler("pdfimages"), "-list", str(path)], capture_output=True,
                            text=True, check=True).stdout.splitlines()[2:]
    assert len(images) == len(build_sc(ctx))  # one thumbnail per SC image


@pytest.mark.slow
def test_pdf_is_deterministic(tumor_ctx: ResultContext) -> None:
    thumbs = [thumbnail(ds) for ds in build_sc(tumor_ctx)]
    assert build_pdf(tumor_ctx, thumbs) == build_pdf(tumor_ctx, thumbs)


@pytest.mark.slow
def test_first_page_renders_with_the_red_disclaimer_on_top(lung_ctx: ResultContext,
                                                            tmp_path: Path) -> None:
    _, path = _report(lung_ctx, tmp_path)
    subprocess.run([poppler("pdftoppm"), "-png", "-r", "100", "-f", "1", "-l", "1",
                    str(path), str(tmp_path / "page")], check=True)
    (png,) = tmp_path.glob("page*.png")
    print(f"\npage 1 of the lung-ct report: {png}")
    with Image.open(png) as image:
        page = np.asarray(image.convert("RGB")).astype(int)
    assert page.shape[0] > page.shape[1] > 700  # A4 portrait at 100 dpi
    red = (page[..., 0] > 140) & (page[..., 1] < 60) & (page[..., 2] < 60)
    rows = np.nonzero(red.any(axis=1))[0]
    assert rows.size and rows[0] < page.shape[0] * 0.2  # the disclaimer box near the top
    assert red[-page.shape[0] // 12:].any()  # and the footer repeats it
    thumbs = (page.max(axis=-1) - page.min(axis=-1) > 60) & ~red  # coloured overlay pixels
    assert thumbs.sum() > 1000


@pytest.mark.slow
def test_encapsulated_pdf_is_valid_dicom_in_the_source_study(ctx: ResultContext,
                                                             tmp_path: Path) -> None:
    pdf, _ = _report(ctx, tmp_path)
    path = tmp_path / "report.dcm"
    build_encapsulated_pdf(ctx, pdf).save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert all(any(w in line for w in ACCEPTED_WARNINGS) for line in warnings), warnings
    ds = pydicom.dcmread(path)
    source = ctx.sources[0]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber"):
        assert ds.get(keyword) == source.get(keyword), keyword
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (ctx.uid("PDF-series"), ctx.uid("PDF"))
    assert (ds.SeriesNumber, ds.InstanceNumber, ds.Modality) == (SERIES_NUMBERS["PDF"], 1, "DOC")
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength] == pdf
    assert ds.BurnedInAnnotation == "YES" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert ctx.algorithm in ds.DocumentTitle
    assert (ds.ContentDate, ds.ContentTime) == ("20261122", "103000")
    assert ds.AcquisitionDateTime == "20261122103000"
    assert [r.ReferencedSOPInstanceUID for r in ds.SourceInstanceSequence] == [
        s.SOPInstanceUID for s in ctx.sources]


@pytest.mark.slow
def test_a_classifier_report_names_one_finding(tumor_ctx: ResultContext,
                                               tmp_path: Path) -> None:
    """One finding (the predicted class), the other classes only as probabilities."""
    _, path = _report(tumor_ctx, tmp_path)
    text = _text(path)
    findings = tumor_ctx.result.findings
    predicted = max(findings, key=lambda f: f.probability)
    (spec,) = [s for s in tumor_ctx.manifest.findings if s.concept == predicted.concept]
    assert f"Finding: {spec.name} (probability {100 * predicted.probability:.1f} %)" in text
    assert "Probability of each class" in text
    # "not found" in the row of each other class, and once in the summary sentence
    assert text.count("not found") == len(findings)
    assert "Most probable class" not in text
