"""A small stride-8 convolutional encoder for dense correspondence (tracking) on a CPU.

Three stride-2 3x3 conv -> BatchNorm -> ReLU stages take a frame to 1/8 of its size;
``blocks`` residual bottlenecks with dilation 2 then widen the receptive field at that
resolution without shrinking the map, the recipe of the stride-8 ResNet trunks of
colorization tracking (arXiv:1806.09594) and CRW (arXiv:2006.14613) at a fraction of
their cost. The map ends in a BatchNorm without a ReLU, so its channels are centred and
signed: dot products between positions, the affinities of those methods, can then be
negative as well as positive.

With the defaults (217 k parameters) a 64x64 grayscale frame costs 17.6 M multiply-adds
(35 MFLOPs) and each output cell sees 79 pixels (``receptive_field``); a colorization step
on 16 clips of 4 such frames, forward and backward, is about 7 GFLOPs. The full-size
recipes use ``resnet`` with ``out_stride=8``.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmssl.encoders.maps import FeatureMapEncoder
from mmssl.registry import ENCODERS


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own.
    pad = dilation * (kernel // 2)
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out)]


class DilatedBottleneck(nn.Module):
    """x + (1x1 reduce -> 3x3 dilated -> 1x1 expand)(x), each conv BN-ReLU, ReLU after the sum.

    The 1x1 convolutions halve the width around the 3x3 one, which is about a quarter of
    the cost of a basic two-3x3 block of the full width.
    """

    def __init__(self, dim: int, dilation: int = 2):
        super().__init__()
        mid = max(dim // 2, 1)
        self.branch = nn.Sequential(*conv_bn(dim, mid, 1), nn.ReLU(inplace=True),
                                    *conv_bn(mid, mid, 3, dilation=dilation), nn.ReLU(inplace=True),
                                    *conv_bn(mid, dim, 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.branch(x))


@dataclasses.dataclass(frozen=True)
class DenseConvNetSettings:
    """The ``dense_convnet`` a task config names in ``encoder.dense_convnet``."""

    widths: tuple[int, ...] = (32, 64, 128)  # channels of the three stride-2 stages; the last is D

    def spec(self, channels: int) -> dict:
        """The registry spec for frames of ``channels`` channels."""
        return {"name": "dense_convnet", "kwargs": {"widths": list(self.widths), "channels": channels}}


@ENCODERS.register("dense_convnet")
class DenseConvNet(FeatureMapEncoder):
    """Frames (B, C, H, W) -> a stride-8 map (B, D, ceil(H/8), ceil(W/8)), D = widths[-1].

    Args:
        widths: channels of the three stride-2 stages; the last is the embedding width D.
        channels: input channels C (1 for the L channel of Lab, 3 for RGB).
        blocks: dilated residual blocks at stride 8.
    """

    stride = 8

    def __init__(self, widths: tuple[int, ...] | list[int] = (32, 64, 128), channels: int = 1, blocks: int = 2):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive channel counts (one per stride-2 stage), "
                             f"not {list(widths)}")
        if blocks < 0 or channels < 1:
            raise ValueError(f"need blocks >= 0 and channels >= 1, got blocks={blocks}, channels={channels}")
        layers, c_in = [], channels
        for width in widths:
            # A strided conv, not conv + max-pool: the same downsampling at a quarter of the convolution cost.
            layers += [*conv_bn(c_in, width, 3, stride=2), nn.ReLU(inplace=True)]
            c_in = width
        self.stem = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*(DilatedBottleneck(c_in) for _ in range(blocks)))
        # The last ReLU would leave only non-negative features, whose dot products are all positive;
        # a final BatchNorm instead keeps each channel centred with a learned scale.
        self.out = nn.Sequential(*conv_bn(c_in, c_in, 1))
        self.embed_dim = c_in
        self.channels = channels
        self.receptive_field = 15 + blocks * 2 * 2 * self.stride  # 15 px from the stem, +2 * dilation * 8 per block

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, ceil(H / 8), ceil(W / 8))."""
        return self.out(self.blocks(self.stem(x)))
