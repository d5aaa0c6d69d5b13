"""Convert deepbrain 0.1's frozen TensorFlow graph into a PyTorch state_dict (no TensorFlow).

    python models/brain-mask/convert.py path/to/deepbrain/models/graph.pb \
        models/brain-mask/brain_unet3d.pt

Maps each ``<layer>/kernel`` (DHWIO; for transposed convolutions DHW-out-in) and ``<layer>/bias``
constant onto the layer of the same name in ``network.BrainUNet3D`` (OIDHW; transposed: in-out-DHW,
the same permutation), then checks the torch network's logits against a NumPy interpretation of the
graph on a random 16^3 input and prints the largest difference and the file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from graphdef import Node, read_graph
from network import BrainUNet3D
from reference import run_graph

_TOLERANCE = 1e-5  # float32 against float64


def _tf_name(torch_name: str) -> str:
    layer, kind = torch_name.replace(".tconv", "").rsplit(".", 1)
    return f"{layer}/{'kernel' if kind == 'weight' else 'bias'}"


def state_dict_from_graph(nodes: dict[str, Node]) -> dict[str, torch.Tensor]:
    """The network's weights from the graph's constants, float32, in torch layout."""
    state: dict[str, torch.Tensor] = {}
    for name, param in BrainUNet3D().state_dict().items():
        const = np.asarray(nodes[_tf_name(name)].attrs["value"], dtype=np.float32)
        if const.ndim == 5:
            const = const.transpose(4, 3, 0, 1, 2)  # DHW,a,b -> b,a,DHW
        if tuple(const.shape) != tuple(param.shape):
            raise ValueError(f"{name}: graph shape {const.shape} != network {tuple(param.shape)}")
        state[name] = torch.from_numpy(np.ascontiguousarray(const))
    return state


def _unused_weights(nodes: dict[str, Node], state: dict[str, torch.Tensor]) -> list[str]:
    used = {_tf_name(name) for name in state}
    return [
        n.name
        for n in nodes.values()
        if n.op == "Const" and n.name.endswith(("/kernel", "/bias")) and n.name not in used
    ]


def max_difference(nodes: dict[str, Node], state: dict[str, torch.Tensor], size: int = 16) -> float:
    """Largest |torch - NumPy graph reference| of the logits, relative to their range."""
    image = np.random.default_rng(0).random((1, size, size, size, 1))
    expected = run_graph(nodes, image, output="conv3d_9/BiasAdd")[..., 0]
    net = BrainUNet3D()
    net.load_state_dict(state)
    net.eval()
    with torch.inference_mode():
        got = net.logits(torch.from_numpy(image[..., 0][:, None]).float())[:, 0].double().numpy()
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path, help="deepbrain/models/graph.pb from deepbrain 0.1")
    parser.add_argument("output", type=Path, help="where to write the state_dict (.pt)")
    args = parser.parse_args(argv)

    nodes = read_graph(args.graph.read_bytes())
    state = state_dict_from_graph(nodes)
    unused = _unused_weights(nodes, state)
    if unused:
        print(f"graph weights not mapped: {unused}", file=sys.stderr)
        return 1
    diff = max_difference(nodes, state)
    print(f"parameters: {sum(t.numel() for t in state.values())}")
    print(f"max |torch - NumPy graph reference| / max |reference|, logits, random 16^3: {diff:.3g}")
    if diff > _TOLERANCE:
        print("conversion check failed", file=sys.stderr)
        return 1
    torch.save(state, args.output)
    print(f"sha256 {hashlib.sha256(args.output.read_bytes()).hexdigest()}  {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
