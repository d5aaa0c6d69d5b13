"""Weight loaders registered by name, checksum verification, device choice, entry import."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.core.errors import ConfigError
from node.core.manifest import Manifest

Loader = Callable[[Manifest, str], Any]
LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def add(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn

    return add


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(m: Manifest) -> None:
    path = m.weights_path
    if path is None:
        return
    if not path.is_file():
        raise ConfigError([f"models/{m.name}: weights file {m.weights_file} not found"])
    actual = sha256_of(path)
    if actual != m.weights_sha256:
        raise ConfigError([
            f"models/{m.name}: weights checksum mismatch for {m.weights_file} "
            f"(manifest {m.weights_sha256[:12]}…, file {actual[:12]}…)"
        ])


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"models.device: {setting} requested but CUDA is not available"])
    return setting


def import_from(folder: Path, ref: str, model_name: str) -> Any:
    """Import ``file.py:Name`` from a model folder (folders need not be Python packages)."""
    filename, _, attr = ref.partition(":")
    path = folder / filename
    module_name = f"dicom_node_models.{model_name.replace('-', '_')}.{path.stem}"
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], attr)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ConfigError([f"models/{model_name}: cannot import {ref}"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError([f"models/{model_name}: {filename} has no {attr}"]) from None


@register("none")
def _no_weights(_m: Manifest, _device: str) -> None:
    return None


@register("torchscript")
def _torchscript(m: Manifest, device: str) -> Any:
    import torch

    assert m.weights_path is not None
    return torch.jit.load(str(m.weights_path), map_location=device).eval()  # type: ignore[no-untyped-call]


@register("state_dict")
def _state_dict(m: Manifest, device: str) -> Any:
    import torch

    assert m.weights_path is not None
    network = import_from(m.folder, m.module, m.name)()
    state = torch.load(m.weights_path, map_location=device, weights_only=True)
    network.load_state_dict(state)
    return network.to(device).eval()
