"""Drawing helpers of the SC and PDF writers: a bitmap font, banners, legends, contours, PNG.

No system fonts and no imaging library: text is drawn from the 5x9 bitmap font below (our own,
capitals and digits 7 rows high, lower case with 2 rows of descender), scaled by an integer
factor. Images are ``uint8`` RGB arrays (rows, columns, 3), drawn on in place.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

RGB = tuple[int, int, int]

GLYPH_W, GLYPH_H = 5, 9
ADVANCE = GLYPH_W + 1  # pixels per character at scale 1
LINE = GLYPH_H + 2  # pixels per line at scale 1
PAD = 3  # margin inside banners and legends at scale 1

_CAPS = {  # 7 rows (padded to 9)
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    " ": "..... ..... ..... ..... ..... ..... .....",
    "-": "..... ..... ..... ##### ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    ";": "..... .##.. .##.. ..... .##.. ..#.. .#...",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    '"': ".#.#. .#.#. .#.#. ..... ..... ..... .....",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "^": "..#.. .#.#. #...# ..... ..... ..... .....",
}
_SMALL = {  # 9 rows: x-height rows 2-6, descenders in rows 7-8
    "a": "..... ..... .###. ....# .#### #...# .#### ..... .....",
    "b": "#.... #.... ####. #...# #...# #...# ####. ..... .....",
    "c": "..... ..... .#### #.... #.... #.... .#### ..... .....",
    "d": "....# ....# .#### #...# #...# #...# .#### ..... .....",
    "e": "..... ..... .###. #...# ##### #.... .###. ..... .....",
    "f": "..##. .#..# .#... ###.. .#... .#... .#... ..... .....",
    "g": "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    "h": "#.... #.... ####. #...# #...# #...# #...# ..... .....",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###. ..... .....",
    "j": "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#. ..... .....",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###. ..... .....",
    "m": "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.# ..... .....",
    "n": "..... ..... ####. #...# #...# #...# #...# ..... .....",
    "o": "..... ..... .###. #...# #...# #...# .###. ..... .....",
    "p": "..... ..... ####. #...# #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #.... ..... .....",
    "s": "..... ..... .#### #.... .###. ....# ####. ..... .....",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##. ..... .....",
    "u": "..... ..... #...# #...# #...# #..## .##.# ..... .....",
    "v": "..... ..... #...# #...# #...# .#.#. ..#.. ..... .....",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#. ..... .....",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...# ..... .....",
    "y": "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... ##### ..... .....",
}


def _parse(rows: str) -> np.ndarray:
    lines = rows.split() + ["....."] * (GLYPH_H - len(rows.split()))
    return np.array([[ch == "#" for ch in line] for line in lines], dtype=bool)


#: character -> (9, 5) bitmap; characters not in it are drawn as "?"
FONT: dict[str, np.ndarray] = {ch: _parse(rows) for ch, rows in (_CAPS | _SMALL).items()}


@dataclass(frozen=True)
class Box:
    """A rectangle of an image: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int

    @property
    def region(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


@dataclass(frozen=True)
class LegendEntry:
    """One legend line: a colour swatch (or the heatmap's colour bar) and its text."""

    text: str
    swatch: RGB | None = None
    colour_bar: bool = False


@dataclass(frozen=True)
class Thumbnail:
    """A key image for the PDF report: PNG bytes and a caption."""

    png: bytes
    caption: str


def format_quantity(value: float, unit: str) -> str:
    """A measurement as written on images and in the report, e.g. '216.2 mL', '14.6 %'."""
    return f"{value:.1f} {unit}" if abs(value) >= 1.0 else f"{value:.3g} {unit}"


def format_probability(probability: float) -> str:
    """A probability (0..1) in percent, e.g. '99.8 %'; below 0.1 % as '< 0.1 %'."""
    return f"{100.0 * probability:.1f} %" if probability >= 0.0005 else "< 0.1 %"


def text_width(text: str, scale: int) -> int:
    return max(0, (ADVANCE * len(text) - 1) * scale)


def draw_text(image: np.ndarray, top: int, left: int, text: str, scale: int, colour: RGB) -> None:
    """Draw ``text`` with its first glyph's top-left corner at (top, left); clipped to image."""
    rows, cols = image.shape[:2]
    for n, ch in enumerate(text):
        glyph = np.kron(FONT.get(ch, FONT["?"]), np.ones((scale, scale), dtype=bool))
        y, x = top, left + n * ADVANCE * scale
        h, w = min(glyph.shape[0], rows - y), min(glyph.shape[1], cols - x)
        if h <= 0 or w <= 0 or y < 0 or x < 0:
            continue
        image[y:y + h, x:x + w][glyph[:h, :w]] = colour


def text_mask(text: str, scale: int) -> np.ndarray:
    """The pixels ``draw_text`` would set for ``text``, as a (GLYPH_H * scale, width) mask."""
    mask = np.zeros((GLYPH_H * scale, text_width(text, scale)), dtype=bool)
    for n, ch in enumerate(text):
        x = n * ADVANCE * scale
        mask[:, x:x + GLYPH_W * scale] = np.kron(FONT.get(ch, FONT["?"]),
                                                 np.ones((scale, scale), dtype=bool))
    return mask


def outline_width(scale: int) -> int:
    """Pixels of dark outline around outlined text of ``scale``."""
    return max(1, (scale + 1) // 2)


def outlined_size(text: str, scale: int) -> tuple[int, int]:
    """(height, width) of ``text`` drawn by ``draw_outlined_text``, outline included; the
    height is that of capitals and digits (7 rows), which is all an outlined label uses."""
    r = outline_width(scale)
    return 7 * scale + 2 * r, text_width(text, scale) + 2 * r


def draw_outlined_text(image: np.ndarray, top: int, left: int, text: str, scale: int,
                       colour: RGB = (255, 255, 255), outline: RGB = (0, 0, 0)) -> Box:
    """Text in ``colour`` inside a dark outline, legible on any image (bright bone and black
    air alike) without hiding more than a few pixels around it. (top, left) is the outline's
    corner; returns the box it covers (see ``outlined_size``), clipped to the image."""
    r = outline_width(scale)
    glyphs = np.pad(text_mask(text, scale)[:7 * scale], r)
    ring = ndimage.binary_dilation(glyphs, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    rows, cols = image.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(rows, top + glyphs.shape[0]), min(cols, left + glyphs.shape[1])
    if y1 <= y0 or x1 <= x0:
        return Box(y0, x0, 0, 0)
    part = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    region = image[y0:y1, x0:x1]
    region[ring[part] & ~glyphs[part]] = outline
    region[glyphs[part]] = colour
    return Box(y0, x0, y1 - y0, x1 - x0)


def _greedy(words: list[str], limit: int) -> list[str]:
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= limit:
            lines[-1] += " " + word
        else:
            lines.extend(word[i:i + limit] for i in range(0, len(word), limit))
    return lines


def wrap(text: str, width: int, scale: int) -> list[str]:
    """Words of ``text`` in lines at most ``width`` pixels wide (a longer word is cut), as
    even in length as the fewest lines allow."""
    words, limit = text.split(), max(1, (width // scale + 1) // ADVANCE)
    count = len(_greedy(words, limit))
    while limit > 1 and len(_greedy(words, limit - 1)) == count:
        limit -= 1
    return _greedy(words, limit)


def draw_banner(image: np.ndarray, lines: Sequence[str], scale: int, colour: RGB,
                text_colour: RGB) -> Box:
    """A solid band across the top of the image, one text line per entry of ``lines``."""
    box = Box(0, 0, min(image.shape[0], (2 * PAD + LINE * len(lines) - 2) * scale),
              image.shape[1])
    image[box.region] = colour
    for n, line in enumerate(lines):
        draw_text(image, (PAD + n * LINE) * scale, PAD * scale, line, scale, colour=text_colour)
    return box


def draw_legend(image: np.ndarray, entries: Sequence[LegendEntry], scale: int) -> Box:
    """A dark box in the bottom-left corner: swatch (or colour bar) and text per entry."""
    swatch = 2 * GLYPH_W * scale  # wide enough for the colour bar to read as a gradient
    max_chars = (image.shape[1] - (3 * PAD * scale + swatch)) // (ADVANCE * scale)
    texts = [e.text[:max(1, max_chars)] for e in entries]
    width = min(image.shape[1], 3 * PAD * scale + swatch + max(text_width(t, scale) for t in texts))
    height = min(image.shape[0], (2 * PAD + LINE * len(entries) - 2) * scale)
    box = Box(image.shape[0] - height, 0, height, width)
    image[box.region] = (image[box.region] // 5)  # darkened: text stays legible on any image
    left = PAD * scale
    for n, (entry, text) in enumerate(zip(entries, texts, strict=True)):
        top = box.top + (PAD + n * LINE) * scale
        cell = (slice(top + scale, top + 7 * scale), slice(left, left + swatch))
        if entry.colour_bar:
            ramp = heat_colours(np.linspace(0.0, 1.0, swatch))
            image[cell] = ramp[None, :, :]
        elif entry.swatch is not None:
            image[cell] = entry.swatch
        draw_text(image, top, left + swatch + PAD * scale, text, scale, (255, 255, 255))
    return box


def edge(mask: np.ndarray) -> np.ndarray:
    """The mask's own pixels that touch a pixel outside it (4-neighbourhood, image border too)."""
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1),
                                   border_value=0)
    return np.asarray(mask & ~inner, dtype=bool)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-green-yellow-red colour map of values in 0..1, as uint8 RGB."""
    stops = np.linspace(0.0, 1.0, 5)
    table = np.array([(0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)])
    v = np.clip(values, 0.0, 1.0)
    out = np.stack([np.interp(v, stops, table[:, c]) for c in range(3)], axis=-1)
    return np.asarray(np.rint(out), dtype=np.uint8)


def blend_heatmap(image: np.ndarray, values: np.ndarray, threshold: float = 0.2,
                  opacity: float = 0.5) -> None:
    """Lay a semi-transparent heatmap on ``image``: nothing below ``threshold``, then opacity
    growing to ``opacity`` at 1.0, so the anatomy stays visible underneath."""
    alpha = opacity * np.clip((values - threshold) / (1.0 - threshold), 0.0, 1.0)[..., None]
    mixed = (1.0 - alpha) * image + alpha * heat_colours(values)
    image[...] = np.rint(mixed).astype(np.uint8)


def encode_png(rgb: np.ndarray, level: int = 1) -> bytes:
    """An 8-bit RGB PNG (no filtering, zlib ``level``) of a (rows, columns, 3) uint8 array.

    Level 1 by default: the PNGs go into the PDF report, and fpdf2 decodes them and deflates the
    pixels again itself, so a higher level only costs time (level 9 took 0.08 s an image and
    gave the very same PDF bytes).
    """
    rows, cols = rgb.shape[:2]
    raw = np.zeros((rows, 1 + 3 * cols), dtype=np.uint8)  # filter byte 0 before each row
    raw[:, 1:] = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(rows, 3 * cols)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b""))


def shrink(rgb: np.ndarray, max_size: int) -> np.ndarray:
    """Block-average by the smallest integer factor that makes both sides <= max_size."""
    factor = max(1, -(-max(rgb.shape[:2]) // max_size))
    rows, cols = (rgb.shape[0] // factor) * factor, (rgb.shape[1] // factor) * factor
    blocks = rgb[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor, 3)
    return np.asarray(np.rint(blocks.mean(axis=(1, 3))), dtype=np.uint8)
