"""deepbrain 0.1's brain-extraction 3D U-Net, rebuilt in PyTorch from its frozen graph.

Read off ``deepbrain/models/graph.pb`` (the layer names below are the graph's): three encoder
levels of two 3x3x3 'SAME' convolutions with ReLU (8, 16, 32 channels) and 2x2x2 max pooling; three
decoder levels of a stride-2 3x3x3 transposed convolution without bias or activation, concatenated
(upsampled first, skip second) with the encoder output of that level, then one 3x3x3 convolution
with ReLU; a 1x1x1 convolution to one channel and a sigmoid. Dropout is off at inference. 171,465
parameters. Input (N, 1, 128, 128, 128) scaled to [0, 1]; output brain probability, same shape.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(in_ch: int, out_ch: int) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1)


class _Up(nn.Module):
    """TensorFlow's ``conv3d_transpose(strides=2, padding='SAME')``: doubles each spatial size.

    For SAME padding TensorFlow pads the forward convolution by 0 before and 1 after, so the
    transposed result is the full (2n + 1) output with its last element dropped on each axis.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.tconv = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=3, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = (2 * s for s in x.shape[2:])
        return self.tconv(x)[:, :, :d, :h, :w]


class BrainUNet3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3d = _conv(1, 8)
        self.conv3d_1 = _conv(8, 8)
        self.conv3d_2 = _conv(8, 16)
        self.conv3d_3 = _conv(16, 16)
        self.conv3d_4 = _conv(16, 32)
        self.conv3d_5 = _conv(32, 32)
        self.conv3d_transpose = _Up(32, 32)
        self.conv3d_6 = _conv(64, 32)
        self.conv3d_transpose_1 = _Up(32, 16)
        self.conv3d_7 = _conv(32, 16)
        self.conv3d_transpose_2 = _Up(16, 8)
        self.conv3d_8 = _conv(16, 8)
        self.conv3d_9 = nn.Conv3d(8, 1, kernel_size=1)
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Brain probability for ``x`` of shape (N, 1, D, H, W), D, H, W divisible by 8."""
        return torch.sigmoid(self.logits(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's ``conv3d_9/BiasAdd``: the input of the final sigmoid."""
        r = self.relu
        skip1 = r(self.conv3d_1(r(self.conv3d(x))))
        skip2 = r(self.conv3d_3(r(self.conv3d_2(self.pool(skip1)))))
        skip3 = r(self.conv3d_5(r(self.conv3d_4(self.pool(skip2)))))
        out = self.pool(skip3)
        out = r(self.conv3d_6(torch.cat((self.conv3d_transpose(out), skip3), dim=1)))
        out = r(self.conv3d_7(torch.cat((self.conv3d_transpose_1(out), skip2), dim=1)))
        out = r(self.conv3d_8(torch.cat((self.conv3d_transpose_2(out), skip1), dim=1)))
        return self.conv3d_9(out)
