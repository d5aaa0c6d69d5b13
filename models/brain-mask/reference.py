"""A NumPy interpreter for the frozen deepbrain graph: the independent check of the conversion.

Evaluates the graph node by node in TensorFlow's own layout (NDHWC activations, DHWIO kernels)
with inference semantics (``training`` false: every dropout ``cond`` takes its identity branch).
Slow, meant for small inputs (e.g. 16^3).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import numpy as np
from graphdef import Node

Array = np.ndarray


def _conv_same(x: Array, k: Array) -> Array:
    """Conv3D, stride 1, 'SAME' padding: x (N, D, H, W, C), k (kd, kh, kw, C, O)."""
    kd, kh, kw = k.shape[:3]
    pads = [(0, 0)] + [((s - 1) // 2, s // 2) for s in (kd, kh, kw)] + [(0, 0)]
    xp = np.pad(x, pads)
    n, d, h, w, _ = x.shape
    out = np.zeros((n, d, h, w, k.shape[4]), dtype=np.float64)
    for i, j, m in product(range(kd), range(kh), range(kw)):
        out += np.einsum("ndhwc,co->ndhwo", xp[:, i : i + d, j : j + h, m : m + w], k[i, j, m])
    return out


def _conv_transpose_same_s2(x: Array, k: Array) -> Array:
    """Conv3DBackpropInputV2, stride 2, 'SAME': the gradient of a stride-2 SAME Conv3D.

    That forward conv (input 2n, kernel 3) pads 0 before and 1 after, so input position 2p + i
    receives g[p] * k[i]; positions at 2n (the padding) are dropped.
    """
    n, d, h, w, _ = x.shape
    kd, kh, kw = k.shape[:3]
    out = np.zeros((n, 2 * d + kd - 1, 2 * h + kh - 1, 2 * w + kw - 1, k.shape[3]))
    for i, j, m in product(range(kd), range(kh), range(kw)):
        contrib = np.einsum("ndhwo,co->ndhwc", x, k[i, j, m])
        out[:, i : i + 2 * d : 2, j : j + 2 * h : 2, m : m + 2 * w : 2] += contrib
    return out[:, : 2 * d, : 2 * h, : 2 * w]


def _max_pool2(x: Array) -> Array:
    n, d, h, w, c = x.shape
    return x.reshape(n, d // 2, 2, h // 2, 2, w // 2, 2, c).max(axis=(2, 4, 6))


def run_graph(nodes: dict[str, Node], image: Array, output: str = "prob") -> Array:
    """Evaluate ``output`` for ``image`` fed to ``img`` (N, D, H, W, 1), in float64."""
    cache: dict[str, Array] = {}

    def value(ref: str) -> Array:
        name = ref.split(":")[0]
        if name not in cache:
            cache[name] = _evaluate(nodes[name], value, image)
        return cache[name]

    return value(output)


def _check(node: Node, strides: list[int]) -> None:
    if (
        node.attrs.get("data_format") not in ("NDHWC", "NHWC")
        or node.attrs.get("strides") != strides
    ):
        raise ValueError(f"{node.name}: unexpected layout or strides {node.attrs}")
    if node.attrs.get("padding") not in ("SAME", "VALID"):
        raise ValueError(f"{node.name}: unexpected padding")


def _evaluate(node: Node, value: Callable[[str], Array], image: Array) -> Array:  # noqa: C901
    op, ins = node.op, node.inputs
    if node.name == "img":
        return image.astype(np.float64)
    if op == "Const":
        return np.asarray(node.attrs["value"], dtype=np.float64)
    if op in ("Identity", "Switch"):  # Switch on training=False: data leaves by output 0
        return value(ins[0])
    if op == "Merge":  # dropout cond: inputs[0] is the identity (training=False) branch
        if not ins[0].endswith("cond/Identity"):
            raise ValueError(f"{node.name}: unexpected Merge inputs {ins}")
        return value(ins[0])
    if op == "Conv3D":
        _check(node, [1, 1, 1, 1, 1])
        return _conv_same(value(ins[0]), value(ins[1]))
    if op == "Conv3DBackpropInputV2":
        _check(node, [1, 2, 2, 2, 1])
        return _conv_transpose_same_s2(value(ins[2]), value(ins[1]))
    if op == "BiasAdd":
        return value(ins[0]) + value(ins[1])
    if op == "Relu":
        return np.maximum(value(ins[0]), 0.0)
    if op == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-value(ins[0])))
    if op == "MaxPool3D":
        _check(node, [1, 2, 2, 2, 1])
        return _max_pool2(value(ins[0]))
    if op == "ConcatV2":
        axis = int(value(ins[-1]))
        return np.concatenate([value(i) for i in ins[:-1]], axis=axis)
    raise ValueError(f"{node.name}: op {op} is not supported by this reference")
