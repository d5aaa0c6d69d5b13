"""Series selection: which series of a study a model wants (pure, on header summaries)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from node.core.manifest import Selection


@dataclass(frozen=True)
class SeriesInfo:
    series_instance_uid: str
    modality: str
    body_part: str
    description: str
    orientation: str  # axial, coronal, sagittal, oblique, unknown
    slices: int


def orientation_of(iop: Iterable[float] | None) -> str:
    """Axial/coronal/sagittal by the dominant axis of the slice normal (else oblique)."""
    if iop is None:
        return "unknown"
    values = [float(v) for v in iop]
    if len(values) != 6:
        return "unknown"
    normal = np.abs(np.cross(values[:3], values[3:]))
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def summarize(datasets: Iterable[Dataset]) -> list[SeriesInfo]:
    """Group instance headers by series; multi-frame images count their frames."""
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    out = []
    for uid, items in groups.items():
        first = items[0]
        iop = first.get("ImageOrientationPatient")
        if iop is None and "SharedFunctionalGroupsSequence" in first:
            shared = first.SharedFunctionalGroupsSequence[0]
            if "PlaneOrientationSequence" in shared:
                iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        out.append(SeriesInfo(
            series_instance_uid=uid,
            modality=str(first.get("Modality", "")),
            body_part=str(first.get("BodyPartExamined", "")),
            description=str(first.get("SeriesDescription", "")),
            orientation=orientation_of(iop),
            slices=sum(int(d.get("NumberOfFrames", 1) or 1) for d in items),
        ))
    return out


def eligible(info: SeriesInfo, rules: Selection) -> str | None:
    """Why ``info`` does not fit ``rules``, or None when it does."""
    if rules.modalities and info.modality.upper() not in {m.upper() for m in rules.modalities}:
        return f"modality {info.modality or '-'} not in {', '.join(rules.modalities)}"
    if rules.body_parts and info.body_part.upper() not in {b.upper() for b in rules.body_parts}:
        return "body part not selected"
    if rules.series_description and not re.search(rules.series_description, info.description):
        return "series description does not match"
    if info.slices < rules.min_slices:
        return f"{info.slices} slices, fewer than {rules.min_slices}"
    if "any" not in rules.orientations and info.orientation not in rules.orientations:
        return f"orientation {info.orientation} not in {', '.join(rules.orientations)}"
    return None


def select_series(series: list[SeriesInfo], rules: Selection) -> SeriesInfo | None:
    """The eligible series with the most slices (ties: the first), or None."""
    fitting = [s for s in series if eligible(s, rules) is None]
    return max(fitting, key=lambda s: s.slices) if fitting else None
