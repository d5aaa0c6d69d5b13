"""Discover, verify and load the configured models once; hand them to the pipeline."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.core.contract import ModelResult, Volume
from node.core.errors import ConfigError
from node.core.manifest import Manifest, load_manifest
from node.pipeline.infer.loaders import LOADERS, import_from, resolve_device, verify_weights


class Model(Protocol):
    def predict(self, volume: Volume) -> ModelResult: ...


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    model: Model
    device: str
    load_s: float


def load_model(folder: Path, device_setting: str = "auto") -> LoadedModel:
    """Read the manifest, check the weights' sha256, load them, build the model object."""
    started = time.perf_counter()
    manifest = load_manifest(folder)
    verify_weights(manifest)
    device = resolve_device(device_setting)
    network = LOADERS[manifest.loader](manifest, device)
    if manifest.entry:
        cls = import_from(folder, manifest.entry, manifest.name)
        params = inspect.signature(cls).parameters
        kwargs: dict[str, Any] = {"folder": folder, "device": device}
        if "network" in params:
            kwargs["network"] = network
        if "manifest" in params:
            kwargs["manifest"] = manifest
        model: Model = cls(**kwargs)
    else:
        from node.pipeline.infer.generic import GenericTorchScriptModel

        model = GenericTorchScriptModel(manifest, network, device)
    return LoadedModel(manifest, model, device, time.perf_counter() - started)


def load_models(
    models_dir: Path, names: tuple[str, ...], device: str = "auto"
) -> dict[str, LoadedModel]:
    """Load every named model; all problems are collected into one ConfigError."""
    loaded: dict[str, LoadedModel] = {}
    problems: list[str] = []
    for name in names:
        folder = models_dir / name
        if not folder.is_dir():
            problems.append(f"models.enabled: no model folder {folder}")
            continue
        try:
            loaded[name] = load_model(folder, device)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return loaded
