"""The split-brain encoder (Zhang, Isola & Efros, arXiv:1611.09842): one conv net split in two
along its channels, a half reading the lightness L of CIE Lab and a half reading its colour (a, b).

Each half is a ``ConvNet`` of half the width at every stage, so the pair costs about half one
net of the full width (a conv's cost goes with c_in x c_out) and its features are as wide: the
two maps concatenated along channels, L half first. Neither half sees the other's channels,
which is what lets the objective ask each to predict the other's input.

The encoder takes what every image encoder takes, images normalised with the ImageNet MEAN / STD,
and turns them into Lab itself, so the image probes, the random-encoder baseline and
``save_encoder`` / ``load_encoder`` treat it as any other conv net.
"""
from __future__ import annotations

import torch

from mmssl.encoders.convnet import ConvNet
from mmssl.encoders.maps import FeatureMapEncoder
from mmssl.modalities.vision.augment import denormalize
from mmssl.objectives.colorization import rgb_to_lab
from mmssl.registry import ENCODERS

AB_SCALE = 110  # a and b of sRGB colours lie within about +-110: ab / 110 is within [-1, 1]


@ENCODERS.register("split_brain")
class SplitBrainEncoder(FeatureMapEncoder):
    """Normalised RGB images (B, 3, H, W) -> tokens (B, h * w, widths[-1]): the cells of the L
    half's and the ab half's maps, concatenated along channels.

    Args:
        widths: channels of each conv-pool stage of the whole net, each even; each half has
            ``w // 2`` (the paper splits every layer in two), and D = widths[-1].
    """

    def __init__(self, widths: tuple[int, ...] | list[int] = (32, 64, 128, 256)):
        super().__init__()
        if not widths or min(widths) < 2 or any(w % 2 for w in widths):
            raise ValueError(f"split_brain's widths must be even channel counts >= 2 (each stage is split in "
                             f"two halves), not {list(widths)}")
        half = [w // 2 for w in widths]
        self.l_net = ConvNet(half, channels=1)  # reads L
        self.ab_net = ConvNet(half, channels=2)  # reads (a, b)
        self.embed_dim = widths[-1]
        self.stride = self.l_net.stride

    @staticmethod
    @torch.no_grad()
    def lab(x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB (B, 3, H, W) -> CIE Lab (B, 3, H, W): L in [0, 100], a and b within about +-110."""
        return rgb_to_lab(denormalize(x))

    def half_maps(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lab (B, 3, H, W) -> the L half's and the ab half's maps, each (B, D / 2, h, w)."""
        f_l = self.l_net.feature_map(lab[:, :1] / 50 - 1)  # L in [-1, 1]
        f_ab = self.ab_net.feature_map(lab[:, 1:] / AB_SCALE)
        return f_l, f_ab

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB (B, 3, H, W) -> (B, D, h, w): the L half's channels, then the ab half's."""
        return torch.cat(self.half_maps(self.lab(x)), dim=1)
