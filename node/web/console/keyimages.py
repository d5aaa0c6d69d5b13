"""Key images on the Study page: window presets and the two layers a browser stacks (pure).

A key image is one slice a model named (its key slices, its heatmap slices) of the study's
DE-IDENTIFIED copy, shown in two layers: the slice in grey, windowed by a preset, and the
model's result on a transparent layer above it (segment contours, a heatmap, a banner that says
it is an AI result that needs review, with the model's name and version). The overlay is
switched on and off by showing or hiding its layer; a preset changes the grey layer only.

Presets suit the modality: CT windows in Hounsfield units (lung, soft tissue, bone, brain);
for MR and anything else, whose values have no fixed scale, ranges from the slice's own values
(percentiles of the pixels above the background, or the full range).

Nothing here reads a file or knows a patient: arrays in, PNG bytes out. ``Image.save`` writes
no text chunk, so a PNG holds pixels only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from node.web.console.words import N_

#: contour colours, one per segment in the result's order (the SC images' palette)
PALETTE: tuple[tuple[int, int, int], ...] = ((0, 255, 0), (0, 200, 255), (255, 0, 255),
                                             (255, 128, 0), (90, 120, 255), (255, 40, 40))
BANNER_TEXT = "AI RESULT - NEEDS REVIEW"
BANNER_COLOUR = (255, 200, 0, 230)
#: key images shown per model run at most (its key slices first, then its heatmap slices)
MAX_IMAGES = 4
#: heatmap values below this are not drawn; above it the layer grows to HEAT_OPACITY at 1.0
HEAT_THRESHOLD, HEAT_OPACITY = 0.2, 0.5


@dataclass(frozen=True)
class Preset:
    """A window: ``kind`` "window" (centre and width in HU) or "percentile" (the lowest and
    highest percentile of the pixels above the slice's minimum shown as black and white)."""

    name: str
    label: str  # English, translated through the console's catalogue
    kind: str
    low: float
    high: float


CT_PRESETS = (
    Preset("soft-tissue", N_("Soft tissue"), "window", 40.0, 400.0),
    Preset("lung", N_("Lung"), "window", -600.0, 1500.0),
    Preset("bone", N_("Bone"), "window", 400.0, 1800.0),
    Preset("brain", N_("Brain"), "window", 40.0, 80.0),
)
OTHER_PRESETS = (
    Preset("auto", N_("Auto"), "percentile", 0.5, 99.5),
    Preset("full", N_("Full range"), "percentile", 0.0, 100.0),
    Preset("high-contrast", N_("High contrast"), "percentile", 10.0, 90.0),
    Preset("dark-detail", N_("Dark detail"), "percentile", 0.5, 75.0),
)
#: every preset by name (the names are unique across modalities)
PRESETS = {p.name: p for p in (*CT_PRESETS, *OTHER_PRESETS)}


def presets_for(modality: str) -> tuple[Preset, ...]:
    return CT_PRESETS if modality == "CT" else OTHER_PRESETS


def default_preset(modality: str, lung: bool) -> Preset:
    """The preset a run's images open with: lung for a CT model that segments lungs, soft
    tissue for other CT, the automatic range otherwise."""
    if modality == "CT":
        return PRESETS["lung" if lung else "soft-tissue"]
    return PRESETS["auto"]


def window(values: np.ndarray, preset: Preset) -> tuple[float, float]:
    """(lowest, highest) displayed value of ``values`` under ``preset``."""
    if preset.kind == "window":
        width = max(preset.high, 1.0)
        return preset.low - width / 2.0, preset.low + width / 2.0
    body = values[values > values.min()]
    lo, hi = np.percentile(body if body.size else values, [preset.low, preset.high])
    return float(lo), float(max(hi, lo + 1.0))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=3)
    return out.getvalue()


def base_png(values: np.ndarray, preset: Preset, *, inverted: bool = False) -> bytes:
    """The slice (values in physical units, e.g. HU) in grey under ``preset``; ``inverted``
    for MONOCHROME1 (high values dark)."""
    lo, hi = window(values, preset)
    grey = np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if inverted:
        grey = 1.0 - grey
    return _png(Image.fromarray(np.asarray(np.rint(grey * 255.0), dtype=np.uint8), mode="L"))


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """Blue-cyan-green-yellow-red for 0..1 (the SC images' colour map), uint8 RGB."""
    stops = np.linspace(0.0, 1.0, 5)
    table = np.array([(0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)])
    v = np.clip(values, 0.0, 1.0)
    return np.asarray(np.rint(np.stack([np.interp(v, stops, table[:, c]) for c in range(3)],
                                       axis=-1)), dtype=np.uint8)


def _contour(mask: np.ndarray, thick: bool) -> np.ndarray:
    """The mask's own pixels on its border (4-neighbourhood), two pixels wide when ``thick``."""
    structure = ndimage.generate_binary_structure(2, 1)
    inner = ndimage.binary_erosion(mask, structure=structure, iterations=2 if thick else 1,
                                   border_value=0)
    return np.asarray(mask & ~inner, dtype=bool)


def overlay_png(shape: tuple[int, int], masks: list[np.ndarray], heatmap: np.ndarray | None,
                model: str) -> bytes:
    """The transparent layer of one slice: the heatmap, each mask's contour in its palette
    colour (in ``masks``' order), and a banner naming the AI result and ``model``."""
    rgba = np.zeros((*shape, 4), dtype=np.uint8)
    if heatmap is not None:
        alpha = HEAT_OPACITY * np.clip((heatmap - HEAT_THRESHOLD) / (1.0 - HEAT_THRESHOLD),
                                       0.0, 1.0)
        rgba[..., :3] = _heat_colours(heatmap)
        rgba[..., 3] = np.asarray(np.rint(alpha * 255.0), dtype=np.uint8)
    thick = max(shape) >= 384
    for n, mask in enumerate(masks):
        rgba[_contour(mask.astype(bool, copy=False), thick)] = (*PALETTE[n % len(PALETTE)], 255)
    image = Image.fromarray(rgba, mode="RGBA")
    _banner(image, f"{BANNER_TEXT} - {model}")
    return _png(image)


def _banner(image: Image.Image, text: str) -> None:
    """A yellow band across the top with ``text`` in black, sized to the image's width."""
    size = max(9, image.width // 40)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    while right - left > image.width - 8 and size > 6:
        size -= 1
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 3)
    draw.rectangle((0, 0, image.width, bottom - top + 2 * pad), fill=BANNER_COLOUR)
    draw.text((4 - left, pad - top), text, fill=(0, 0, 0, 255), font=font)
