"""A minimal reader of TensorFlow's frozen ``GraphDef`` protobuf, without TensorFlow.

Decodes the protobuf wire format for the few messages a frozen graph uses (GraphDef, NodeDef,
AttrValue, TensorProto, TensorShapeProto). Field numbers follow TensorFlow's public ``.proto``
files (graph.proto, node_def.proto, attr_value.proto, tensor.proto, tensor_shape.proto).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# tensorflow/core/framework/types.proto: DataType enum values -> numpy dtypes
_DTYPES: dict[int, Any] = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed(value: int) -> int:
    """Reinterpret a decoded varint as two's-complement int64 (how negatives are encoded)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _BYTES:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, _, value in _fields(buf):
        if number == 2:  # repeated Dim dim
            size = 0
            for n, _, v in _fields(value):
                if n == 1:
                    size = _signed(v)  # -1 = unknown
            dims.append(size)
    return tuple(dims)


def _tensor(buf: bytes) -> np.ndarray:
    dtype: Any = np.float32
    shape: tuple[int, ...] = ()
    content = b""
    floats: list[float] = []
    ints: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype = _DTYPES[value]
        elif number == 2:
            shape = _shape(value)
        elif number == 4:
            content = value
        elif number == 5:  # float_val, packed or not
            floats.extend(np.frombuffer(value, "<f4").tolist())
        elif number in (7, 10, 11):  # int_val, int64_val, bool_val
            ints.extend(_packed_varints(value) if wire == _BYTES else [_signed(value)])
    count = int(np.prod(shape)) if shape else 1
    if content:
        return np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()
    values = floats or ints or [0]
    array = np.array(values, dtype=dtype)
    if array.size != count:  # TensorFlow repeats the last value to fill the shape
        array = np.concatenate([array, np.full(count - array.size, array[-1], dtype=dtype)])
    return array.reshape(shape)


def _packed_varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        out.append(_signed(value))
    return out


def _list_value(buf: bytes) -> list[Any]:
    out: list[Any] = []
    for number, wire, value in _fields(buf):
        if number == 2:
            out.append(value.decode())
        elif number == 3:
            out.extend(_packed_varints(value) if wire == _BYTES else [value])
        elif number == 4:
            out.extend(np.frombuffer(value, "<f4").tolist())
    return out


def _attr_value(buf: bytes) -> Any:
    for number, _, value in _fields(buf):
        if number == 1:
            return _list_value(value)
        if number == 2:
            return value.decode(errors="replace")
        if number in (3, 6):  # i, type
            return _signed(value)
        if number == 4:
            return float(np.frombuffer(value, "<f4")[0])
        if number == 5:
            return bool(value)
        if number == 7:
            return _shape(value)
        if number == 8:
            return _tensor(value)
    return None


def _node(buf: bytes) -> Node:
    node = Node(name="", op="")
    for number, _, value in _fields(buf):
        if number == 1:
            node.name = value.decode()
        elif number == 2:
            node.op = value.decode()
        elif number == 3:
            node.inputs.append(value.decode())
        elif number == 5:  # map<string, AttrValue> entry
            entry = {n: v for n, _, v in _fields(value)}
            node.attrs[entry[1].decode()] = _attr_value(entry.get(2, b""))
    return node


def read_graph(data: bytes) -> dict[str, Node]:
    """Parse a serialized GraphDef into its nodes, by name, in graph order."""
    nodes = [_node(value) for number, _, value in _fields(data) if number == 1]
    return {node.name: node for node in nodes}
