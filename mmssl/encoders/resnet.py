"""torchvision ResNet trunk (He et al., arXiv:1512.03385) as a token encoder.

The tokens are the cells of the last feature map, (B, H' * W', C), so the
global average pool of the classifier is ``pool`` and dense objectives can use
the map itself. ``small_stem`` swaps the 7x7 stride-2 convolution and max-pool
for one 3x3 stride-1 convolution, the CIFAR variant SimCLR (arXiv:2002.05709)
uses on 32x32 images, which keeps a 4x4 final map instead of a 1x1 one.
"""
from __future__ import annotations

import torch
import torchvision
from einops import rearrange
from torch import nn

from mmssl.registry import ENCODERS

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@ENCODERS.register("resnet")
class ResNet(nn.Module):
    """Images (B, C, H, W) -> tokens (B, H' * W', D), D = 512 (resnet18/34) or 2048 (resnet50+).

    The submodules keep torchvision's names (``conv1`` ... ``layer4``), so a torchvision
    state dict without ``fc`` loads into the default stem.

    Args:
        arch: a torchvision ResNet name, "resnet18" or "resnet50" (also 34, 101, 152).
        small_stem: 3x3 stride-1 first convolution and no max-pool, for 32x32 inputs.
        channels: input channels C (3 for RGB, 1 for spectrograms).
        channels_last: run in the channels-last memory format (faster convolutions on
            GPUs with tensor cores and on recent CPUs).
    """

    def __init__(self, arch: str = "resnet18", small_stem: bool = False, channels: int = 3,
                 channels_last: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; known: {', '.join(ARCHS)}")
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
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> tokens (B, H' * W', D), row-major over the final feature map."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D, H', W')
        return rearrange(x, "b d h w -> b (h w) d")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): global average pooling."""
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
