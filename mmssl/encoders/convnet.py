"""A small VGG-style convolutional encoder for CPU-sized demos.

Four 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool stages: a 32 px image becomes a
2x2 map of ``widths[-1]`` channels at about a fortieth of a small-stem ResNet-18's
cost, and it learns shapes from a few thousand images within minutes on a CPU.
The full-size recipes use ResNet or ViT (configs/).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmssl.encoders.maps import FeatureMapEncoder
from mmssl.registry import ENCODERS


@dataclasses.dataclass(frozen=True)
class ConvNetSettings:
    """The ``convnet`` a task config names in ``encoder.convnet`` (``encoder.convnet.widths=32,64``)."""

    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels of each conv-pool stage; the last is D

    def spec(self) -> dict:
        return {"name": "convnet", "kwargs": {"widths": list(self.widths)}}


@ENCODERS.register("convnet")
class ConvNet(FeatureMapEncoder):
    """Images (B, C, H, W) -> tokens, one per cell of the final feature map, for S = len(widths) stages."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (32, 64, 128, 256), channels: int = 3):
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive channel counts, not {list(widths)}")
        layers, c_in = [], channels
        for width in widths:
            # No conv bias: the BatchNorm that follows has its own.
            # ceil_mode: an odd or 1-pixel map still pools, so small crops (SwAV's local views) work
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in = width
        self.net = nn.Sequential(*layers)
        self.embed_dim = c_in
        self.stride = 2 ** len(widths)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, widths[-1], ceil(H / 2^S), ceil(W / 2^S)), in the channels-last memory format."""
        # Channels-last: the CPU's convolution, BatchNorm and max-pool kernels vectorise over channels in
        # it (the layout carries through every layer); the same maths, rounded in another order.
        return self.net(x.contiguous(memory_format=torch.channels_last))
