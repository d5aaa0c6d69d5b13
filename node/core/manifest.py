"""A model folder's ``manifest.toml``, read into frozen dataclasses with clear errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.core.errors import ConfigError

TASKS = ("segmentation", "classification", "measurement")
LOADERS = ("torchscript", "state_dict", "none")
NORMALIZATIONS = ("none", "minmax", "window", "zscore")
#: a segmentation model's uncertainty methods (``[uncertainty] method``); "none": off
UNCERTAINTY = ("none", "flips")
#: a classifier's explanation methods (``[explain] methods``): key -> the name shown to readers
EXPLAIN_METHODS = {"grad-cam": "Grad-CAM", "grad-cam++": "Grad-CAM++", "score-cam": "Score-CAM"}


@dataclass(frozen=True)
class Selection:
    """A model's selection rules (``[selection]`` in its manifest)."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    series_description: str = ""
    min_slices: int = 1
    orientations: tuple[str, ...] = ("any",)


@dataclass(frozen=True)
class CodedConcept:
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class InputSpec:
    target_size: tuple[int, ...] = ()
    target_spacing_mm: tuple[float, ...] = ()
    normalization: str = "none"
    window: tuple[float, ...] = ()


@dataclass(frozen=True)
class SegmentSpec:
    label: int
    name: str
    category: CodedConcept
    type: CodedConcept


@dataclass(frozen=True)
class MeasurementSpec:
    name: str
    unit: str
    concept: CodedConcept | None


@dataclass(frozen=True)
class FindingSpec:
    index: int
    name: str
    concept: CodedConcept


@dataclass(frozen=True)
class TriageSpec:
    measurement: str = ""
    priority_above: float = 0.0
    urgent_above: float = 0.0


@dataclass(frozen=True)
class ExplainSpec:
    """How a classifier explains its answer (``[explain]``; see node/pipeline/infer/explain.py).

    - ``methods``: heatmaps made, one overlay each, keys of ``EXPLAIN_METHODS``; default
      ``["grad-cam"]``.
    - ``score_cam_channels``: Score-CAM masks the input with at most this many activation
      channels (those with the largest mean activation), one forward pass each; default 32.
    - ``regions``: boxes around the heatmap's strongest regions, at most this many; default 3
      (0: none).
    - ``region_threshold``: a region is the pixels at or above this fraction (0..1) of the
      heatmap's maximum; default 0.5.
    """

    methods: tuple[str, ...] = ("grad-cam",)
    score_cam_channels: int = 32
    regions: int = 3
    region_threshold: float = 0.5


@dataclass(frozen=True)
class UncertaintySpec:
    """How sure a segmentation model says it is (``[uncertainty]``; off by default, since it
    multiplies the inference time).

    - ``method``: "none" (default), or "flips": the network also runs on the input's mirror
      images (test-time augmentation); each pass gives a mask, the measurement an interval
      (the spread of the passes' values) and every voxel a disagreement.
    - ``flag_above``: the result is flagged "uncertain" when the voxels on which the passes
      disagree exceed this fraction (0..1) of the mask's voxels; default 0.10.
    """

    method: str = "none"
    flag_above: float = 0.10


@dataclass(frozen=True)
class Manifest:
    folder: Path
    name: str
    version: str
    task: str
    summary: str
    entry: str
    licence: str
    provenance: str
    intended_use: str
    weights_file: str
    weights_sha256: str
    loader: str
    module: str
    selection: Selection
    input: InputSpec
    segments: tuple[SegmentSpec, ...]
    measurements: tuple[MeasurementSpec, ...]
    findings: tuple[FindingSpec, ...]
    triage: TriageSpec
    explain: ExplainSpec = ExplainSpec()
    uncertainty: UncertaintySpec = UncertaintySpec()

    @property
    def weights_path(self) -> Path | None:
        return self.folder / self.weights_file if self.weights_file else None


def _concept(value: Any, where: str) -> CodedConcept:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise ConfigError([f"{where}: expected [code value, coding scheme, code meaning]"])
    return CodedConcept(value=value[0], scheme=value[1], meaning=value[2])


def _str(data: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise ConfigError([f"{where}.{key}: required text"])
    return value


def _segment(s: dict[str, Any], where: str) -> SegmentSpec:
    return SegmentSpec(int(s["label"]), str(s["name"]),
                       _concept(s.get("category"), f"{where} segments.category"),
                       _concept(s.get("type"), f"{where} segments.type"))


def _measurement(m: dict[str, Any], where: str) -> MeasurementSpec:
    concept = _concept(m["concept"], f"{where} measurements") if m.get("concept") else None
    return MeasurementSpec(str(m["name"]), str(m["unit"]), concept)


def _names(value: Any) -> tuple[str, ...]:
    """A list of names, or one name given alone."""
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def load_manifest(folder: Path) -> Manifest:
    path = folder / "manifest.toml"
    where = f"models/{folder.name}/manifest.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{where}: not found"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: unreadable ({exc})"]) from None
    weights = data.get("weights", {})
    sel = data.get("selection", {})
    inp = data.get("input", {})
    tri = data.get("triage", {})
    exp = data.get("explain", {})
    unc = data.get("uncertainty", {})
    manifest = Manifest(
        folder=folder,
        name=_str(data, "name", where),
        version=_str(data, "version", where),
        task=_str(data, "task", where),
        summary=_str(data, "summary", where),
        entry=_str(data, "entry", where, required=False),
        licence=_str(data, "licence", where),
        provenance=_str(data, "provenance", where),
        intended_use=_str(data, "intended_use", where, required=False),
        weights_file=_str(weights, "file", f"{where} [weights]", required=False),
        weights_sha256=_str(weights, "sha256", f"{where} [weights]", required=False).lower(),
        loader=_str(weights, "loader", f"{where} [weights]"),
        module=_str(weights, "module", f"{where} [weights]", required=False),
        selection=Selection(
            modalities=tuple(sel.get("modalities", ())),
            body_parts=tuple(sel.get("body_parts", ())),
            series_description=str(sel.get("series_description", "")),
            min_slices=int(sel.get("min_slices", 1)),
            orientations=tuple(sel.get("orientations", ("any",))),
        ),
        input=InputSpec(
            target_size=tuple(int(v) for v in inp.get("target_size", ())),
            target_spacing_mm=tuple(float(v) for v in inp.get("target_spacing_mm", ())),
            normalization=str(inp.get("normalization", "none")),
            window=tuple(float(v) for v in inp.get("window", ())),
        ),
        segments=tuple(_segment(s, where) for s in data.get("segments", ())),
        measurements=tuple(_measurement(m, where) for m in data.get("measurements", ())),
        findings=tuple(
            FindingSpec(int(f["index"]), str(f["name"]), _concept(f.get("concept"), where))
            for f in data.get("findings", ())
        ),
        triage=TriageSpec(str(tri.get("measurement", "")), float(tri.get("priority_above", 0.0)),
                          float(tri.get("urgent_above", 0.0))),
        explain=ExplainSpec(
            methods=_names(exp.get("methods", ExplainSpec.methods)),
            score_cam_channels=int(exp.get("score_cam_channels", 32)),
            regions=int(exp.get("regions", ExplainSpec.regions)),
            region_threshold=float(exp.get("region_threshold", ExplainSpec.region_threshold)),
        ),
        uncertainty=_uncertainty(unc, where),
    )
    _check(manifest, where)
    return manifest


def _uncertainty(u: Any, where: str) -> UncertaintySpec:
    """``[uncertainty]``, each wrong key or value one line."""
    where = f"{where} [uncertainty]"
    if not isinstance(u, dict):
        raise ConfigError([f"{where}: must be a table"])
    problems = [f"{where}: unknown key {key!r} (known: method, flag_above)"
                for key in u if key not in ("method", "flag_above")]
    method = u.get("method", UncertaintySpec.method)
    if method not in UNCERTAINTY:
        problems.append(f"{where}.method: {method!r} is not one of {', '.join(UNCERTAINTY)}")
    flag_above = u.get("flag_above", UncertaintySpec.flag_above)
    if isinstance(flag_above, bool) or not isinstance(flag_above, int | float) \
            or not 0.0 < flag_above <= 1.0:
        problems.append(f"{where}.flag_above: a number above 0, at most 1")
    if problems:
        raise ConfigError(problems)
    return UncertaintySpec(str(method), float(flag_above))


def _check(m: Manifest, where: str) -> None:
    problems = _check_weights(m, where)
    if m.name != m.folder.name:
        problems.append(f"{where}: name {m.name!r} differs from its folder's name")
    if m.task not in TASKS:
        problems.append(f"{where}: task must be one of {', '.join(TASKS)}")
    if m.entry and ":" not in m.entry:
        problems.append(f"{where}: entry must be 'file.py:ClassName'")
    if not m.entry and m.loader != "torchscript":
        problems.append(f"{where}: entry is required unless the loader is torchscript")
    if m.input.normalization not in NORMALIZATIONS:
        problems.append(f"{where} [input].normalization: one of {', '.join(NORMALIZATIONS)}")
    if m.input.normalization == "window" and len(m.input.window) != 2:
        problems.append(f"{where} [input].window: [center, width] required for 'window'")
    problems.extend(_check_explain(m.explain, where))
    if m.uncertainty.method != "none" and m.task != "segmentation":
        problems.append(f"{where} [uncertainty].method: only a segmentation model reports "
                        "uncertainty here (calibrated classifiers are not built yet)")
    if problems:
        raise ConfigError(problems)


def _check_explain(e: ExplainSpec, where: str) -> list[str]:
    problems = [f"{where} [explain].methods: unknown method {name!r} "
                f"(one of {', '.join(EXPLAIN_METHODS)})"
                for name in e.methods if name not in EXPLAIN_METHODS]
    if len(set(e.methods)) != len(e.methods):
        problems.append(f"{where} [explain].methods: a method is named twice")
    if e.score_cam_channels < 1:
        problems.append(f"{where} [explain].score_cam_channels: at least 1")
    if e.regions < 0:
        problems.append(f"{where} [explain].regions: 0 or more")
    if not 0.0 < e.region_threshold <= 1.0:
        problems.append(f"{where} [explain].region_threshold: above 0, at most 1")
    return problems


def _check_weights(m: Manifest, where: str) -> list[str]:
    problems = []
    if m.loader not in LOADERS:
        problems.append(f"{where} [weights].loader: must be one of {', '.join(LOADERS)}")
    if m.loader != "none" and not (m.weights_file and m.weights_sha256):
        problems.append(f"{where} [weights]: file and sha256 are required for loader {m.loader}")
    if m.loader == "state_dict" and ":" not in m.module:
        problems.append(f"{where} [weights].module: expected 'file.py:ClassName'")
    return problems
