"""SC images of real model results: valid DICOM in the source study, a banner that reads as
required, contours exactly on the masks' edges, a display window that shows the anatomy, and a
heatmap where the model's saliency is.

The banner and legend text is read back from the stored pixels by matching each character cell
against the bitmap font (the font is the alphabet, not the layout under test). So are the
orientation markers, on axial, sagittal and coronal series of the same real brain (Colin27
written out in each plane) and on a chest CT whose columns run to the patient's right.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from scipy import ndimage

from node.core.contract import ResultContext
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.render import (
    ADVANCE,
    FONT,
    GLYPH_H,
    GLYPH_W,
    LINE,
    PAD,
    encode_png,
    outline_width,
    wrap,
)
from node.sr_writer.sc import (
    BANNER_COLOUR,
    BANNER_TEXT,
    BANNER_TEXT_COLOUR,
    EdgeLetters,
    Overlay,
    build_sc,
    choose_slices,
    edge_letters,
    patient_direction,
    render_overlay,
)
from tests.models.chest_phantom import chest_phantom, write_ct_series
from tests.models.test_brain_mask import _mr_slice, _nifti
from tests.result_contexts import _context
from tests.sr_writer.conftest import dciodvfy

CONTEXTS = ["brain_ctx", "lung_ctx", "tumor_ctx"]
#: dciodvfy warnings kept, each about a value copied from the source as it is there
ACCEPTED_WARNINGS = (
    "needed to build DICOMDIR",  # the chest phantom's source has empty Study Date/Time/ID
    "Retired Person Name form",  # its Patient's Name 'CQ500-CT-310' has no '^'
    # its source has no Body Part Examined, so Laterality (Type 2C) is sent empty: unknown
    "only permitted to be empty when actually unknown",
)
_GLYPHS = {glyph.tobytes(): ch for ch, glyph in FONT.items()}


@pytest.fixture(params=CONTEXTS)
def ctx(request: pytest.FixtureRequest) -> ResultContext:
    value: ResultContext = request.getfixturevalue(request.param)
    return value


def _written(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def read_text(pixels: np.ndarray, top: int, left: int, scale: int,
              colour: tuple[int, int, int]) -> str:
    """The characters drawn in ``colour`` from (top, left) on, cell by cell, to the image's edge."""
    on = np.all(pixels == colour, axis=-1)
    out = []
    for x in range(left, on.shape[1] - GLYPH_W * scale + 1, ADVANCE * scale):
        cell = on[top:top + GLYPH_H * scale:scale, x:x + GLYPH_W * scale:scale]
        out.append(_GLYPHS.get(np.ascontiguousarray(cell).tobytes(), "\ufffd"))
    return "".join(out).rstrip()


def _annotations(overlay: Overlay) -> np.ndarray:
    out = np.zeros(overlay.rgb.shape[:2], dtype=bool)
    out[overlay.banner.region] = True
    out[overlay.legend.region] = True
    for marker in overlay.markers:
        out[marker.box.region] = True
    return out


def _upscaled(mask: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(np.kron(mask, np.ones((k, k), dtype=bool)), dtype=bool)


def _edge(mask: np.ndarray) -> np.ndarray:
    """Independent of the writer: mask pixels with a 4-neighbour outside the mask or image."""
    padded = np.pad(mask, 1)
    inside = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return np.asarray(mask & ~inside, dtype=bool)


# ---------------------------------------------------------------- fast: font, wrap, PNG


def test_font_glyphs_are_distinct_and_complete() -> None:
    assert all(g.shape == (GLYPH_H, GLYPH_W) for g in FONT.values())
    assert len(_GLYPHS) == len(FONT), "two characters share a bitmap: text could not be read"
    needed = set(BANNER_TEXT) | set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789 -.,:%()/")
    assert needed <= set(FONT)


def test_wrap_keeps_words_and_width() -> None:
    lines = wrap(BANNER_TEXT, width=504, scale=2)
    assert " ".join(lines) == BANNER_TEXT
    assert lines == ["AI RESULT - NOT FOR", "DIAGNOSIS WITHOUT REVIEW"]  # balanced
    assert wrap(BANNER_TEXT, width=537, scale=2) == [BANNER_TEXT]


def test_png_round_trip_of_a_real_rgb_image() -> None:
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array.astype(np.uint8)
    png = encode_png(rgb)
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), rgb)


# ---------------------------------------------------------------- slow: real model results


@pytest.mark.slow
def test_sc_is_valid_dicom_in_the_source_study(ctx: ResultContext, tmp_path: Path) -> None:
    slices = choose_slices(ctx.result, len(ctx.sources))
    scs = build_sc(ctx)
    assert len(scs) == len(slices) >= 1
    for n, (built, index) in enumerate(zip(scs, slices, strict=True)):
        path = tmp_path / f"sc{n}.dcm"
        ds = _written(built, path)
        errors, warnings = dciodvfy(path)
        assert errors == [], errors
        assert all(any(w in line for w in ACCEPTED_WARNINGS) for line in warnings), warnings
        source = ctx.sources[index]
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                        "StudyInstanceUID", "StudyDate", "StudyID", "AccessionNumber"):
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.SeriesInstanceUID == ctx.uid("SC-series")
        assert ds.SOPInstanceUID == ctx.uid("SC", n)
        assert (ds.SeriesNumber, ds.InstanceNumber) == (SERIES_NUMBERS["SC"], n + 1)
        assert ds.SeriesDescription == ctx.series_description("overlay")
        assert ds.ImageType == ["DERIVED", "SECONDARY"]
        assert (ds.ConversionType, ds.BurnedInAnnotation) == ("WSD", "YES")
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("RGB", 3)
        assert (ds.ContentDate, ds.ContentTime) == ("20261122", "103000")
        assert ds.Manufacturer == "dicom-node" and ctx.algorithm in ds.SoftwareVersions
        k = ds.Rows // source.Rows
        assert (ds.Rows, ds.Columns) == (source.Rows * k, source.Columns * k)
        assert max(ds.Rows, ds.Columns) >= 512
        ref = ds.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            source.SOPClassUID, source.SOPInstanceUID)
        assert np.array_equal(ds.pixel_array, render_overlay(ctx, index).rgb)


@pytest.mark.slow
def test_sc_is_deterministic(ctx: ResultContext, tmp_path: Path) -> None:
    first, second = build_sc(ctx), build_sc(ctx)
    for n, (a, b) in enumerate(zip(first, second, strict=True)):
        a.save_as(tmp_path / f"a{n}.dcm", enforce_file_format=True)
        b.save_as(tmp_path / f"b{n}.dcm", enforce_file_format=True)
        assert (tmp_path / f"a{n}.dcm").read_bytes() == (tmp_path / f"b{n}.dcm").read_bytes()
    assert len({ds.SOPInstanceUID for ds in first}) == len(first)


@pytest.mark.slow
def test_banner_reads_ai_result_and_model(ctx: ResultContext, tmp_path: Path) -> None:
    for n, (built, index) in enumerate(zip(build_sc(ctx), choose_slices(ctx.result,
                                                                        len(ctx.sources)),
                                           strict=True)):
        pixels = _written(built, tmp_path / f"sc{n}.dcm").pixel_array
        overlay = render_overlay(ctx, index)
        s, banner = overlay.text_scale, pixels[overlay.banner.region]
        assert overlay.banner.top == 0 and overlay.banner.width == pixels.shape[1]
        background = np.all(banner == BANNER_COLOUR, axis=-1)
        text = np.all(banner == BANNER_TEXT_COLOUR, axis=-1)
        assert (background | text).all(), "the banner holds only its colour and its text"
        assert background.mean() > 0.6 and text.sum() > 500
        count = (overlay.banner.height // s + 2 - 2 * PAD) // LINE
        lines = [read_text(pixels, (PAD + i * LINE) * s, PAD * s, s, BANNER_TEXT_COLOUR)
                 for i in range(count)]
        model = (f"AI-generated heatmap ({overlay.method}), model {ctx.algorithm}"
                 if overlay.method else f"Model {ctx.algorithm}")
        assert " ".join(lines) == f"{BANNER_TEXT} {model}"


def _legend_lines(pixels: np.ndarray, overlay: Overlay) -> list[str]:
    s, box = overlay.text_scale, overlay.legend
    left = PAD * s + 2 * GLYPH_W * s + PAD * s
    count = (box.height // s + 2 - 2 * PAD) // LINE
    return [read_text(pixels, box.top + (PAD + i * LINE) * s, left, s, (255, 255, 255))
            for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["brain_ctx", "lung_ctx"])
def test_contours_lie_on_the_mask_edges(name: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    ctx: ResultContext = request.getfixturevalue(name)
    slices = choose_slices(ctx.result, len(ctx.sources))
    for n, (built, index) in enumerate(zip(build_sc(ctx), slices, strict=True)):
        pixels = _written(built, tmp_path / f"sc{n}.dcm").pixel_array
        overlay = render_overlay(ctx, index)
        k = overlay.upscale
        edges = {s.label: _upscaled(_edge(s.mask[index]), k) for s in ctx.result.segments}
        assert len(set(overlay.colours.values())) == len(ctx.result.segments)
        for seg in ctx.result.segments:
            others = np.logical_or.reduce([e for lbl, e in edges.items() if lbl != seg.label]
                                          + [np.zeros_like(edges[seg.label])])
            where = ~_annotations(overlay) & ~others
            painted = np.all(pixels == overlay.colours[seg.label], axis=-1)
            assert edges[seg.label][where].any()
            assert np.array_equal(painted & where, edges[seg.label] & where), seg.name
        legend = _legend_lines(pixels, overlay)
        assert legend[0].startswith(f"Slice {index + 1}/{len(ctx.sources)}")
        for m in ctx.result.measurements:
            if m.segment_label is not None:
                name_ = next(s.name for s in ctx.result.segments if s.label == m.segment_label)
                assert f"{name_} {m.value:.1f} {m.unit}" in legend


@pytest.mark.slow
def test_lungs_are_shown_in_a_lung_window(lung_ctx: ResultContext) -> None:
    """The source's own window (40/100, a head CT's) would show the lungs black."""
    index = lung_ctx.result.key_slices[0]
    overlay = render_overlay(lung_ctx, index)
    k = overlay.upscale
    lung = np.logical_or.reduce([s.mask[index] for s in lung_ctx.result.segments])
    inner = _upscaled(ndimage.binary_erosion(lung, iterations=3), k) & ~_annotations(overlay)
    grey = overlay.rgb[..., 0]
    assert 40 <= np.median(grey[inner]) <= 160


@pytest.mark.slow
def test_mr_brain_is_windowed_without_clipping(brain_ctx: ResultContext) -> None:
    index = brain_ctx.result.key_slices[0]
    overlay = render_overlay(brain_ctx, index)
    brain = ndimage.binary_erosion(brain_ctx.result.segments[0].mask[index], iterations=3)
    inner = _upscaled(brain, overlay.upscale) & ~_annotations(overlay)
    grey = overlay.rgb[..., 0][inner].astype(float)
    assert (grey >= 255).mean() < 0.02 and (grey <= 0).mean() < 0.02
    assert grey.std() > 20  # grey and white matter are told apart


@pytest.mark.slow
def test_heatmap_is_laid_over_the_slice(tumor_ctx: ResultContext, tmp_path: Path) -> None:
    (heat,) = tumor_ctx.result.heatmaps
    scs = build_sc(tumor_ctx)
    slices = choose_slices(tumor_ctx.result, len(tumor_ctx.sources))
    assert heat.slice_index in slices
    n = slices.index(heat.slice_index)
    pixels = _written(scs[n], tmp_path / "heat.dcm").pixel_array.astype(int)
    overlay = render_overlay(tumor_ctx, heat.slice_index)
    values = np.kron(heat.values, np.ones((overlay.upscale,) * 2))
    free = ~_annotations(overlay)
    colourful = pixels.max(axis=-1) - pixels.min(axis=-1) > 10
    assert colourful[free & (values >= 0.6)].all()
    assert not colourful[free & (values < 0.2)].any()  # no saliency: the slice as it is
    hot = free & (values >= 0.95)
    assert (pixels[hot][:, 0] > pixels[hot][:, 2]).all()  # the hottest spots are red
    best = max(tumor_ctx.result.findings, key=lambda f: f.probability)
    assert f"No tumour {100 * best.probability:.1f} %" in _legend_lines(pixels.astype(np.uint8),
                                                                        overlay)


@pytest.mark.slow
def test_slices_are_key_slices_then_largest_areas(lung_ctx: ResultContext) -> None:
    result, n = lung_ctx.result, len(lung_ctx.sources)
    slices = choose_slices(result, n)
    assert slices[:len(result.key_slices)] == list(result.key_slices)
    assert 1 <= len(slices) - len(result.key_slices) <= 3
    area = np.logical_or.reduce([s.mask for s in result.segments]).sum(axis=(1, 2))
    assert all(area[i] > 0 for i in slices)
    assert min(abs(a - b) for a in slices for b in slices if a != b) >= n // 8
    nothing = dataclasses.replace(result, key_slices=(), segments=(), heatmaps=())
    assert build_sc(dataclasses.replace(lung_ctx, result=nothing)) == []


# ---------------------------------------------------------------- orientation markers

#: Image Orientation (Patient) of each plane the brain is written in: row and column cosines
PLANES = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}
#: the letters a radiologist expects at the left, right, top and bottom edge
EXPECTED = {
    "axial": EdgeLetters(left="R", right="L", top="A", bottom="P"),
    "sagittal": EdgeLetters(left="A", right="P", top="H", bottom="F"),
    "coronal": EdgeLetters(left="R", right="L", top="H", bottom="F"),
    "flipped": EdgeLetters(left="L", right="R", top="A", bottom="P"),
}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def test_direction_letters_follow_the_standard() -> None:
    assert [patient_direction(v) for v in np.eye(3)] == ["L", "P", "H"]
    assert [patient_direction(-v) for v in np.eye(3)] == ["R", "A", "F"]
    assert patient_direction([0.7071, 0.7071, 0.0]) == "LP"  # 45 degrees: both, x first
    assert patient_direction([-0.5, 0.866, 0.0]) == "PR"  # the larger component first
    assert patient_direction([0.98, -0.17, 0.15]) == "LAH"  # double oblique: three letters
    assert patient_direction([0.9998, 0.0175, 0.0]) == "L"  # 1 degree: no second letter
    assert patient_direction([1e-6, -1.0, 2e-6]) == "A"  # scanner rounding noise


def test_edge_letters_of_each_plane() -> None:
    assert edge_letters([1, 0, 0, 0, 1, 0]) == EXPECTED["axial"]
    for plane, (row, column) in PLANES.items():
        assert edge_letters([*row, *column]) == EXPECTED[plane]
    assert edge_letters([-1, 0, 0, 0, 1, 0]) == EXPECTED["flipped"]
    # a feet-first prone axial: rows run to the patient's right, columns anterior
    assert edge_letters([-1, 0, 0, 0, -1, 0]) == EdgeLetters("L", "R", "P", "A")
    oblique = edge_letters([0.866, 0.5, 0.0, 0.0, 0.0, -1.0])  # an axial turned 30 degrees
    assert (oblique.left, oblique.right) == ("RA", "LP")


def _write_plane(folder: Path, row: tuple[float, ...], column: tuple[float, ...]) -> None:
    """Colin27 (RAS voxels, 1 mm, axes along RAS) as an MR series in another plane: each
    pixel is the voxel at its patient position (LPS), so the anatomy is where the letters
    say; one instance per slice."""
    image = _nifti("ch2.nii.gz")
    data = np.asarray(image.dataobj)
    vox_row, vox_col = RAS_TO_LPS @ np.array(row), RAS_TO_LPS @ np.array(column)
    vox_normal = RAS_TO_LPS @ np.cross(row, column)
    axes = [int(np.argmax(np.abs(v))) for v in (vox_normal, vox_col, vox_row)]
    signs = [float(np.sign(v[a])) for v, a in zip((vox_normal, vox_col, vox_row), axes,
                                                   strict=True)]
    volume = data
    for axis, sign in zip(axes, signs, strict=True):
        if sign < 0:
            volume = np.flip(volume, axis)
    volume = np.transpose(volume, axes)  # (slice, row, column)
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    for s in range(volume.shape[0]):
        corner = np.zeros(3)
        for axis, sign, index in zip(axes, signs, (s, 0, 0), strict=True):
            corner[axis] = index if sign > 0 else data.shape[axis] - 1 - index
        position = RAS_TO_LPS @ (image.affine @ np.array([*corner, 1.0]))[:3]
        ds = _mr_slice(study, series, frame, np.ascontiguousarray(volume[s]).astype(np.int16))
        ds.InstanceNumber = s + 1
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [*row, *column]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def plane_ctx(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, ResultContext]:
    """brain-mask on Colin27 in each plane, and lung-ct on the chest with flipped rows."""
    contexts = {"axial": request.getfixturevalue("brain_ctx")}
    for plane, (row, column) in PLANES.items():
        folder = tmp_path_factory.mktemp(plane)
        _write_plane(folder, row, column)
        contexts[plane] = _context(folder, "brain-mask")
    folder = tmp_path_factory.mktemp("flipped")
    write_ct_series(chest_phantom(slices=60, size=192, row_direction=(-1.0, 0.0, 0.0)).volume,
                    folder)
    contexts["flipped"] = _context(folder, "lung-ct")
    return contexts


def _marker_text(pixels: np.ndarray, box: Any, scale: int) -> str:
    """The white letters inside a marker's box, read cell by cell."""
    r = outline_width(scale)
    count = (box.width - 2 * r + scale) // (ADVANCE * scale)
    on = np.all(pixels == (255, 255, 255), axis=-1)
    out = []
    for n in range(count):
        y, x = box.top + r, box.left + r + n * ADVANCE * scale
        cell = np.zeros((GLYPH_H, GLYPH_W), dtype=bool)
        cell[:7] = on[y:y + 7 * scale:scale, x:x + GLYPH_W * scale:scale]
        out.append(_GLYPHS.get(cell.tobytes(), "\ufffd"))
    return "".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("plane", list(EXPECTED))
def test_orientation_markers_on_every_edge(plane: str, plane_ctx: dict[str, ResultContext],
                                           tmp_path: Path) -> None:
    ctx = plane_ctx[plane]
    expected = EXPECTED[plane]
    scs = build_sc(ctx)
    assert scs
    for n, (built, index) in enumerate(zip(scs, choose_slices(ctx.result, len(ctx.sources)),
                                           strict=True)):
        path = tmp_path / f"sc{n}.dcm"
        ds = _written(built, path)
        assert dciodvfy(path)[0] == []
        assert list(ds.PatientOrientation) == [expected.right, expected.bottom]
        pixels = ds.pixel_array
        rows, cols = pixels.shape[:2]
        overlay = render_overlay(ctx, index)
        where = {m.edge: m for m in overlay.markers}
        assert sorted(where) == ["bottom", "left", "right", "top"]
        for edge_name, marker in where.items():
            assert _marker_text(pixels, marker.box, marker.scale) == getattr(expected,
                                                                             edge_name)
            # legible on any image: the letters are outlined in black all round
            r = outline_width(marker.scale)
            box = pixels[marker.box.region]
            white = np.all(box == (255, 255, 255), axis=-1)
            glyphs = np.zeros_like(white)
            text = getattr(expected, edge_name)
            for k, ch in enumerate(text):
                x = r + k * ADVANCE * marker.scale
                glyphs[r:r + 7 * marker.scale, x:x + GLYPH_W * marker.scale] = np.kron(
                    FONT[ch][:7], np.ones((marker.scale, marker.scale), dtype=bool))
            ring = ndimage.binary_dilation(glyphs, np.ones((2 * r + 1,) * 2, bool)) & ~glyphs
            assert white[glyphs].all() and np.all(box[ring] == 0)
            assert marker.scale > overlay.text_scale  # larger than the legend's text
        # each in the middle of its edge, inside a small margin
        margin = 4 * PAD * overlay.text_scale
        left, right, top, bottom = (where[e].box for e in ("left", "right", "top", "bottom"))
        assert left.left <= margin and cols - (right.left + right.width) <= margin
        for box in (left, right):
            assert abs(box.top + box.height / 2 - rows / 2) <= box.height
        for box in (top, bottom):
            assert abs(box.left + box.width / 2 - cols / 2) <= box.width
        assert top.top - (overlay.banner.top + overlay.banner.height) <= margin
        assert rows - (bottom.top + bottom.height) <= margin or (
            bottom.top + bottom.height <= overlay.legend.top)


@pytest.mark.slow
def test_sagittal_markers_match_the_anatomy(plane_ctx: dict[str, ResultContext]) -> None:
    """On the sagittal brain the letters say where the anatomy is, not only what the header
    says: the neck lies on the 'F' side of the brain, and the cerebellum and brainstem (the
    brain's lowest quarter) lie toward 'P', behind the brain's middle."""
    ctx = plane_ctx["sagittal"]
    overlay = render_overlay(ctx, len(ctx.sources) // 2)  # the midline
    (right,) = [m.text for m in overlay.markers if m.edge == "right"]
    (bottom,) = [m.text for m in overlay.markers if m.edge == "bottom"]
    assert (right, bottom) == ("P", "F")
    tissue = overlay.rgb[..., 0] > 40
    tissue[_annotations(overlay)] = False
    brain = _upscaled(ctx.result.segments[0].mask[len(ctx.sources) // 2], overlay.upscale)
    rows, cols = np.nonzero(brain)
    assert tissue[rows.max() + 1:].sum() > 3 * tissue[:rows.min()].sum()  # the neck, below
    lowest = rows >= rows.min() + 0.75 * (rows.max() - rows.min())
    assert cols[lowest].mean() > cols.mean() + 0.05 * overlay.rgb.shape[1]  # toward the right
