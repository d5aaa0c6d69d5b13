"""Secondary Capture images of the key slices with the AI result burned in (highdicom SCImage).

One RGB image per chosen slice: the source slice windowed for display, the segments' contours
(one colour per segment) or a semi-transparent heatmap, a legend, a banner across the top
that says the image is an AI result, not for diagnosis without review, with the model's name and
version, and orientation markers at the middle of each edge: the patient direction (R/L, A/P,
H/F; two or three letters when oblique) that edge points to, from the source's Image
Orientation (Patient), in white outlined in black so that they read on any image. Slices
smaller than 512 pixels are enlarged by an integer factor (nearest neighbour: every source pixel
becomes a k x k block) so that the burned-in text stays legible; the Pixel Spacing is divided by
the same factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sc import SCImage
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from node.core.contract import AI_DISCLAIMER, Finding, ModelResult, ResultContext
from node.core.errors import PermanentError
from node.sr_writer.common import SERIES_NUMBERS
from node.sr_writer.identity import node_attributes, stamp
from node.sr_writer.render import (
    PAD,
    RGB,
    Box,
    LegendEntry,
    Thumbnail,
    blend_heatmap,
    draw_banner,
    draw_legend,
    draw_outlined_text,
    edge,
    encode_png,
    format_probability,
    format_quantity,
    outlined_size,
    shrink,
    wrap,
)

BANNER_TEXT = "AI RESULT - NOT FOR DIAGNOSIS WITHOUT REVIEW"
BANNER_COLOUR: RGB = (255, 200, 0)
BANNER_TEXT_COLOUR: RGB = (0, 0, 0)
#: contour colours, one per segment in the result's order (none of them grey or banner yellow)
PALETTE: tuple[RGB, ...] = ((0, 255, 0), (0, 200, 255), (255, 0, 255), (255, 128, 0),
                            (90, 120, 255), (255, 40, 40))
LUNG_WINDOW = (-600.0, 1500.0)  # centre, width in HU
SOFT_TISSUE_WINDOW = (40.0, 400.0)
_LUNG_TYPES = {("SCT", "39607008"), ("SCT", "3341006"), ("SCT", "44029006")}
MIN_DISPLAY = 512  # smaller slices are enlarged to at least this many pixels on their long side
MAX_UPSCALE = 8
EXTRA_SLICES = 3  # slices with the largest mask area shown besides the key slices
#: a direction cosine at least this large adds its letter to an edge's marker (oblique): about
#: 6 degrees off an axis; the scanners' rounding noise (1e-4 and less) stays below it
OBLIQUE_MIN = 0.1
#: letters for the negative and positive direction of the patient axes x, y, z (PS3.3
#: C.7.6.1.1.1: x toward the patient's left, y toward posterior, z toward the head)
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))
#: each patient direction letter's opposite (PS3.3 C.7.6.1.1.1)
_OPPOSITE = str.maketrans("RLAPFH", "LRPAHF")


@dataclass(frozen=True)
class EdgeLetters:
    """The patient direction each edge of an image points to, e.g. 'R', 'L', 'A', 'P'."""

    left: str
    right: str
    top: str
    bottom: str


@dataclass(frozen=True)
class Marker:
    """One orientation marker drawn on an overlay: its edge, its letters and where it is."""

    edge: str  # left, right, top or bottom
    text: str
    box: Box
    scale: int


@dataclass(frozen=True, eq=False)
class Overlay:
    """One rendered SC image and where its parts are (for the writer and its tests)."""

    slice_index: int
    rgb: np.ndarray  # uint8 (rows * upscale, columns * upscale, 3)
    upscale: int
    text_scale: int
    banner: Box
    banner_lines: tuple[str, ...]
    legend: Box
    colours: dict[int, RGB]  # segment label -> contour colour
    caption: str
    markers: tuple[Marker, ...]
    method: str = ""  # the heatmap's method ("Grad-CAM", ...), "" without one


def choose_slices(result: ModelResult, n_slices: int) -> list[int]:
    """Key slices and heatmap slices first, then up to EXTRA_SLICES slices with the largest
    segmented area, each at least n_slices / 8 slices away from those already chosen."""
    chosen = [i for i in dict.fromkeys([*result.key_slices,
                                        *(h.slice_index for h in result.heatmaps)])
              if 0 <= i < n_slices]
    if not result.segments:
        return chosen
    union = result.segments[0].mask.astype(bool)  # a copy, or'ed with the others in place
    for s in result.segments[1:]:
        np.logical_or(union, s.mask, out=union)
    area = np.count_nonzero(union.reshape(union.shape[0], -1), axis=1)
    gap, added = max(1, n_slices // 8), 0
    for i in (int(i) for i in np.argsort(-area, kind="stable")):
        if area[i] == 0 or added == EXTRA_SLICES:
            break
        if all(abs(i - j) >= gap for j in chosen):
            chosen.append(i)
            added += 1
    return chosen


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS (Window Center/Width may hold several)."""
    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)


def _window(ctx: ResultContext, source: Dataset, values: np.ndarray) -> tuple[float, float]:
    """(lowest, highest) displayed value: a CT window, else the 0.5-99.5 percentiles of the
    slice's pixels above its minimum (the MR background)."""
    if source.get("Modality") == "CT":
        spec = ctx.manifest.input
        if spec.normalization == "window" and len(spec.window) == 2:
            centre, width = spec.window
        elif any((s.type.scheme, s.type.value) in _LUNG_TYPES for s in ctx.result.segments):
            centre, width = LUNG_WINDOW
        elif "WindowCenter" in source and "WindowWidth" in source:
            centre, width = _first(source.WindowCenter), _first(source.WindowWidth)
        else:
            centre, width = SOFT_TISSUE_WINDOW
        width = max(width, 1.0)
        return centre - width / 2.0, centre + width / 2.0
    body = values[values > values.min()]
    lo, hi = np.percentile(body if body.size else values, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1.0))


def _grey(ctx: ResultContext, source: Dataset) -> np.ndarray:
    values = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float64)
    lo, hi = _window(ctx, source, values)
    grey = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if source.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 1.0 - grey
    return np.asarray(np.rint(grey * 255.0), dtype=np.uint8)


def finding_name(ctx: ResultContext, finding: Finding) -> str:
    """The manifest's name of a finding's class (else its code meaning)."""
    names = [f.name for f in ctx.manifest.findings if f.concept.value == finding.concept.value]
    return names[0] if names else finding.concept.meaning


def _legend(ctx: ResultContext, index: int, colours: dict[int, RGB], heat: str | None,
            caption: str) -> list[LegendEntry]:
    entries = [LegendEntry(caption)]
    for seg in ctx.result.segments:
        values = [format_quantity(m.value, m.unit) for m in ctx.result.measurements
                  if m.segment_label == seg.label]
        entries.append(LegendEntry(" ".join([seg.name, *values]), swatch=colours[seg.label]))
    if heat is not None:
        entries.append(LegendEntry(f"{heat} heatmap: low to high" if heat
                                   else "Heatmap: low to high", colour_bar=True))
    for f in sorted(ctx.result.findings, key=lambda f: -f.probability):
        name = finding_name(ctx, f).split(" (")[0]  # the banner says what it is
        entries.append(LegendEntry(f"{name} {format_probability(f.probability)}"))
    return entries


def render_overlay(ctx: ResultContext, index: int, method: str | None = None) -> Overlay:
    """The SC image of slice ``index`` (a pure function of the context); with ``method``, only
    that method's heatmap of the slice; a heatmap's method is named on the banner and legend."""
    grey = _grey(ctx, ctx.sources[index])
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    heatmaps = [h for h in ctx.result.heatmaps if h.slice_index == index
                and (method is None or h.method == method)]
    if any(h.values.shape != grey.shape for h in heatmaps) or any(
            s.mask.shape[1:] != grey.shape for s in ctx.result.segments):
        raise PermanentError("SC: a mask or heatmap does not match the source slice's size")
    for heat in heatmaps:
        blend_heatmap(rgb, heat.values)
    shown = method or next((h.method for h in heatmaps if h.method), "")
    colours = {s.label: PALETTE[n % len(PALETTE)] for n, s in enumerate(ctx.result.segments)}
    for seg in ctx.result.segments:
        rgb[edge(seg.mask[index])] = colours[seg.label]
    k = min(MAX_UPSCALE, max(1, -(-MIN_DISPLAY // max(grey.shape))))
    rgb = np.ascontiguousarray(rgb.repeat(k, axis=0).repeat(k, axis=1))
    scale = max(1, min(rgb.shape[:2]) // 256)
    room = rgb.shape[1] - 2 * PAD * scale
    model = (f"AI-generated heatmap ({shown}), model {ctx.algorithm}" if shown
             else f"Model {ctx.algorithm}")
    lines = (*wrap(BANNER_TEXT, room, scale), *wrap(model, room, scale))
    banner = draw_banner(rgb, lines, scale, BANNER_COLOUR, BANNER_TEXT_COLOUR)
    caption = f"Slice {index + 1}/{len(ctx.sources)}"
    if "InstanceNumber" in ctx.sources[index]:
        caption += f", image {ctx.sources[index].InstanceNumber}"
    if index in ctx.result.key_slices:
        caption += " (key)"
    legend = draw_legend(rgb, _legend(ctx, index, colours, shown if heatmaps else None,
                                      caption), scale)
    markers = _draw_markers(rgb, _letters(ctx.sources[index]), scale, banner, legend)
    return Overlay(index, rgb, k, scale, banner, lines, legend, colours, caption, markers,
                   shown)


def patient_direction(vector: Any) -> str:
    """The patient direction a vector in patient coordinates (LPS) points to, as PS3.3
    C.7.6.1.1.1 writes it: 'L' or 'R', 'P' or 'A', 'H' or 'F', the largest component first,
    then every other component of at least OBLIQUE_MIN (oblique: e.g. 'LP', 'HAR')."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if v.shape != (3,) or not np.isfinite(norm) or norm == 0.0:
        raise PermanentError("SC: the source's Image Orientation (Patient) is not a direction")
    v = v / norm
    order = [int(a) for a in np.argsort(-np.abs(v), kind="stable")]
    return "".join(_AXIS_LETTERS[a][int(v[a] > 0)] for n, a in enumerate(order)
                   if n == 0 or abs(v[a]) >= OBLIQUE_MIN)


def edge_letters(iop: Any) -> EdgeLetters:
    """Which way each edge points, from Image Orientation (Patient): the row cosines point
    from the left edge to the right edge, the column cosines from the top to the bottom."""
    values = np.asarray(iop, dtype=np.float64)
    if values.shape != (6,):
        raise PermanentError("SC: the source's Image Orientation (Patient) is not 6 numbers")
    row, column = values[:3], values[3:]
    return EdgeLetters(left=patient_direction(-row), right=patient_direction(row),
                       top=patient_direction(-column), bottom=patient_direction(column))


def _letters(source: Dataset) -> EdgeLetters:
    """The edges' letters from Image Orientation (Patient), or, for a source without it (a
    picture: a Secondary Capture), from its Patient Orientation (right edge, bottom edge)."""
    if "ImageOrientationPatient" in source:
        return edge_letters([float(v) for v in source.ImageOrientationPatient])
    given = [str(v) for v in source.get("PatientOrientation") or []]
    if len(given) != 2 or not all(given) or not set("".join(given)) <= set("RLAPFH"):
        raise PermanentError("SC: the source slice has no Image Orientation (Patient) "
                             "and no Patient Orientation")
    right, bottom = given
    return EdgeLetters(left=right.translate(_OPPOSITE), right=right,
                       top=bottom.translate(_OPPOSITE), bottom=bottom)


def _overlaps(a: Box, b: Box) -> bool:
    return (a.top < b.top + b.height and b.top < a.top + a.height
            and a.left < b.left + b.width and b.left < a.left + a.width)


def _draw_markers(rgb: np.ndarray, letters: EdgeLetters, scale: int, banner: Box,
                  legend: Box) -> tuple[Marker, ...]:
    """Each edge's letters, white on a black plate, at the middle of that edge, inside a small
    margin: the top one below the banner; one that would cover the legend moves up to just
    above it."""
    rows, cols = rgb.shape[:2]
    size, margin = scale + 1, PAD * scale
    markers = []
    for edge_name in ("left", "right", "top", "bottom"):
        text = getattr(letters, edge_name)
        h, w = outlined_size(text, size)
        top, left = {
            "left": ((rows - h) // 2, margin),
            "right": ((rows - h) // 2, cols - margin - w),
            "top": (banner.top + banner.height + margin, (cols - w) // 2),
            "bottom": (rows - margin - h, (cols - w) // 2),
        }[edge_name]
        if _overlaps(Box(top, left, h, w), legend):
            top = legend.top - margin - h
        # on a black plate: an outline alone leaves the gaps inside a letter (the middle of
        # an H) to the image, which on bright tissue (scalp fat in T1) blurs the letter
        rgb[max(top, 0):top + h, max(left, 0):left + w] = 0
        box = draw_outlined_text(rgb, top, left, text, size)
        markers.append(Marker(edge_name, text, box, size))
    return tuple(markers)


def _orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation of the rows and columns, as on the markers (right, bottom)."""
    letters = _letters(source)
    return letters.right, letters.bottom


def _sc_image(ctx: ResultContext, overlay: Overlay, position: int) -> SCImage:
    source = ctx.sources[overlay.slice_index]
    created = ctx.created
    row, column = _orientation(source)
    spacing = None
    if "PixelSpacing" in source:
        spacing = (float(source.PixelSpacing[0]) / overlay.upscale,
                   float(source.PixelSpacing[1]) / overlay.upscale)
    sc = SCImage(
        pixel_array=overlay.rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=ctx.uid("SC-series"), series_number=SERIES_NUMBERS["SC"],
        sop_instance_uid=ctx.uid("SC", position), instance_number=position + 1,
        pixel_spacing=spacing, patient_orientation=(row[0], column[0]),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **node_attributes(ctx, "overlay"),
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    sc.PatientOrientation = [row, column]  # oblique: several letters, which highdicom refuses
    stamp(sc, ctx, source)
    sc.DateOfSecondaryCapture = DA(created.date())
    sc.TimeOfSecondaryCapture = TM(created.time())
    if "BodyPartExamined" in source:
        sc.BodyPartExamined = source.BodyPartExamined
    if "Laterality" in source:
        sc.Laterality = source.Laterality
    elif "BodyPartExamined" not in source:
        sc.Laterality = ""  # Type 2C: the body part is not stated, so it may be a paired one
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.LossyImageCompression = "00"
    heat = f", {overlay.method} heatmap" if overlay.method else ""
    sc.ImageComments = f"{overlay.caption}{heat}. {AI_DISCLAIMER}"
    _add_derivation(ctx, overlay, source, sc)
    return sc


def _add_derivation(ctx: ResultContext, overlay: Overlay, source: Dataset, sc: Dataset) -> None:
    what = ("contours of the segments" if ctx.result.segments
            else f"{overlay.method} heatmap".lstrip())
    derivation = [codes.DCM.SegmentationImageDerivation] if ctx.result.segments else []
    if overlay.upscale > 1:
        derivation.append(codes.DCM.SpatialResampling)
        what += f", enlarged {overlay.upscale}x (nearest neighbour)"
    sc.DerivationDescription = (f"Source slice windowed for display with the {what} of "
                                f"{ctx.algorithm} burned in")[:1024]
    if derivation:
        sc.DerivationCodeSequence = [CodedConcept.from_code(c) for c in derivation]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = [
        CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence = [ref]


def build_sc(ctx: ResultContext) -> list[Dataset]:
    """One SC image per chosen slice (see ``choose_slices``), in one new series of the study;
    a slice that several explanation methods mapped gets one image per method."""
    overlays = [overlay for index in choose_slices(ctx.result, len(ctx.sources))
                for overlay in _overlays(ctx, index)]
    return [_sc_image(ctx, overlay, n) for n, overlay in enumerate(overlays)]


def _overlays(ctx: ResultContext, index: int) -> list[Overlay]:
    """Slice ``index``'s overlays: one per heatmap method when several methods mapped it."""
    methods = list(dict.fromkeys(h.method for h in ctx.result.heatmaps if h.slice_index == index))
    if len(methods) < 2:
        return [render_overlay(ctx, index)]
    return [render_overlay(ctx, index, m) for m in methods]


def thumbnail(sc: Dataset, max_size: int = 400) -> Thumbnail:
    """A PNG of an SC image (shrunk to at most ``max_size`` pixels a side) for the PDF."""
    caption = str(sc.get("ImageComments", "")).removesuffix(f". {AI_DISCLAIMER}")
    return Thumbnail(encode_png(shrink(np.asarray(sc.pixel_array), max_size)), caption)
