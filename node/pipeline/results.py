"""The result of a model run: the input of the result writers (SEG, SR, SC, KOS, PDF, HL7).

Frozen dataclasses, no I/O. Masks carry the geometry of the volume they were computed on, so a
writer can reference the source images slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from node.pipeline.volume import Geometry


@dataclass(frozen=True)
class CodedConcept:
    value: str
    scheme: str
    meaning: str


class Triage(StrEnum):
    ROUTINE = "ROUTINE"
    PRIORITY = "PRIORITY"
    URGENT = "URGENT"


@dataclass(frozen=True)
class Segment:
    """One labelled region: a boolean mask (slices, rows, columns) on ``geometry``."""

    label: int
    name: str
    category: CodedConcept
    type: CodedConcept
    mask: np.ndarray
    geometry: Geometry


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float
    unit: str  # UCUM, e.g. "mL", "%"
    concept: CodedConcept | None = None
    segment_label: int | None = None


@dataclass(frozen=True)
class Finding:
    """A classification outcome: a coded finding with its probability (0..1)."""

    concept: CodedConcept
    probability: float


@dataclass(frozen=True)
class Heatmap:
    """A saliency map (0..1) on one slice of the volume, e.g. Grad-CAM."""

    slice_index: int
    values: np.ndarray


@dataclass(frozen=True)
class ModelResult:
    model_name: str
    model_version: str
    segments: tuple[Segment, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    findings: tuple[Finding, ...] = ()
    heatmaps: tuple[Heatmap, ...] = ()
    triage: Triage = Triage.ROUTINE
    key_slices: tuple[int, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
