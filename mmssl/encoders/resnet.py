"""torchvision ResNet trunk (He et al., arXiv:1512.03385) as a token encoder.

The tokens are the cells of the last feature map, (B, H' * W', C), so the
global average pool of the classifier is ``pool`` and dense objectives can use
the map itself. ``small_stem`` swaps the 7x7 stride-2 convolution and max-pool
for one 3x3 stride-1 convolution, the CIFAR variant SimCLR (arXiv:2002.05709)
uses on 32x32 images, which keeps a 4x4 final map instead of a 1x1 one.

``out_stride`` 8 or 16 trades the last downsamplings for dilation, as dense objectives
need: 16 dilates layer4; 8 dilates layer3 and drops layer4, the stride-8 res3 trunk that
CRW (arXiv:2006.14613) tracks with (colorization tracking, arXiv:1806.09594, also points
between stride-8 maps).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from mmssl.config import ConfigError
from mmssl.encoders.maps import FeatureMapEncoder
from mmssl.registry import ENCODERS

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
OUT_STRIDES = (8, 16, 32)


def dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Remove a ResNet layer's stride and dilate its 3x3 convolutions instead, in place.

    The same network as torchvision's ``replace_stride_with_dilation`` for that layer (the
    first block keeps dilation 1, the later blocks get ``dilation``), and it also works for
    BasicBlock (resnet18/34), which torchvision refuses to dilate. Weights and their names
    are untouched.
    """
    for i, block in enumerate(layer):
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)
                if conv.kernel_size == (3, 3) and i > 0:
                    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


@dataclasses.dataclass(frozen=True)
class ResNetSettings:
    """The ``resnet`` a task config names in ``encoder.resnet`` (``encoder.resnet.arch=resnet50``)."""

    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152
    small_stem: bool = False  # 3x3 stride-1 stem without max-pool (CIFAR-sized images)
    channels_last: bool | None = None  # memory format; None: channels-last where CUDA is available

    def spec(self, **shape: Any) -> dict:
        """The registry spec; ``shape``: what the task fixes (``channels``, ``out_stride``)."""
        if self.arch not in ARCHS:
            raise ConfigError(f"encoder.resnet.arch must be one of {', '.join(ARCHS)}, not '{self.arch}'")
        channels_last = torch.cuda.is_available() if self.channels_last is None else self.channels_last
        return {"name": "resnet", "kwargs": {"arch": self.arch, "small_stem": self.small_stem,
                                             "channels_last": channels_last, **shape}}


@ENCODERS.register("resnet")
class ResNet(FeatureMapEncoder):
    """Images (B, C, H, W) -> tokens (B, H' * W', D), D = 512 (resnet18/34) or 2048 (resnet50+).

    The submodules keep torchvision's names (``conv1`` ... ``layer4``), so a torchvision
    state dict without ``fc`` loads into the default stem.

    Args:
        arch: a torchvision ResNet name, "resnet18" or "resnet50" (also 34, 101, 152).
        small_stem: 3x3 stride-1 first convolution and no max-pool, for 32x32 inputs.
        channels: input channels C (3 for RGB, 1 for spectrograms).
        channels_last: run in the channels-last memory format (faster convolutions on
            GPUs with tensor cores and on recent CPUs).
        out_stride: 32 (torchvision's network), 16 (layer4 dilated) or 8 (layer3 dilated and
            layer4 dropped: D = 256 for resnet18/34, 1024 for resnet50+). ``small_stem``
            divides the resulting ``stride`` by 4.
    """

    def __init__(self, arch: str = "resnet18", small_stem: bool = False, channels: int = 3,
                 channels_last: bool = False, out_stride: int = 32):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; known: {', '.join(ARCHS)}")
        if out_stride not in OUT_STRIDES:
            raise ValueError(f"out_stride must be one of {', '.join(map(str, OUT_STRIDES))}, not {out_stride}")
        # Imported here: torchvision's package import costs a second of start-up that audio and video
        # runs, and every command that never builds a ResNet, would otherwise pay.
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if small_stem or channels != 3:
            k, stride = (3, 1) if small_stem else (7, 2)
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=k, stride=stride, padding=k // 2, bias=False)
            # torchvision's own initialisation of its convolutions
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_stem:
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.embed_dim = net.fc.in_features
        if out_stride == 16:
            dilate_layer(self.layer4, 2)
        elif out_stride == 8:
            dilate_layer(self.layer3, 2)
            self.layer4 = nn.Identity()
            self.embed_dim //= 2  # every torchvision ResNet's layer4 doubles layer3's width
        self.stride = out_stride // 4 if small_stem else out_stride  # the small stem skips two stride-2 steps
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> the final feature map (B, D, H', W'), H' = ceil(H / stride), W' = ceil(W / stride)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
