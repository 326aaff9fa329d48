"""Split-brain autoencoders (Zhang, Isola & Efros, arXiv:1611.09842).

The encoder (``mmssl.encoders.split_brain``) is split in two along its channels: one half reads the
lightness L of a CIE Lab image, the other its colour (a, b). Each half predicts the channels it
cannot see, as classification over quantised values at every cell of its feature map: the L half
the (a, b) bin, the ab half the L bin. The loss is the sum of the two cross-entropies; each half's
1x1 classifier stays with the objective, and the concatenated maps of both halves are the features.

Targets are the Lab image averaged over each feature cell (adaptive average pooling to the map's
size), then quantised: L into ``l_bins`` uniform bins over [0, 100], (a, b) to the nearest of the
``ab_bins`` k-means centres of a ``ColorQuantizer`` the task fits on its training images, the
colour classes colorization uses (``mmssl.objectives.colorization``).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.objectives.base import Objective
from mmssl.objectives.colorization import ColorQuantizer
from mmssl.objectives.heads import embedding_std
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class SplitBrainSettings:
    """Split-brain's settings, defaults from the paper (arXiv:1611.09842, Sec. 3): L -> ab as
    classification over 313 (a, b) bins and ab -> L over 100 L bins (uniform over L in [0, 100]). Secondary
    readings of the paper give 50 L bins of width 2 instead (configs/split_brain_imagenet.yaml sets 50);
    the paper's text was not at hand to settle which.

    The paper's 313 bins are the in-gamut cells of a grid of side 10 over the (a, b) plane; ours are
    the ``ab_bins`` k-means centres of the task's training colours (``ColorQuantizer``), shared with
    colorization, so the classes follow the colours the data actually has.
    """

    ab_bins: int = 313
    l_bins: int = 100


def l_classes(lightness: torch.Tensor, bins: int) -> torch.Tensor:
    """L in [0, 100] -> its bin among ``bins`` uniform bins: float (...) -> long (...)."""
    return (lightness * (bins / 100)).floor().long().clamp(0, bins - 1)


@OBJECTIVES.register("split_brain")
class SplitBrain(Objective):
    Settings: ClassVar[type] = SplitBrainSettings
    single_view = True

    def __init__(self, encoder: nn.Module, quantizer: ColorQuantizer, *, ab_bins: int = SplitBrainSettings.ab_bins,
                 l_bins: int = SplitBrainSettings.l_bins):
        """
        Args:
            encoder: a split-brain encoder: ``lab(x)`` turns its input into Lab, ``half_maps(lab)``
                gives the L half's and the ab half's maps, (B, embed_dim / 2, h, w) each.
            quantizer: fitted (a, b) classes, ``ab_bins`` of them; its centres are a buffer of this
                module, so they travel in checkpoints. Not a setting: the task fits it on its images.
            ab_bins: (a, b) classes the L half predicts; l_bins: L classes the ab half predicts.
        """
        super().__init__()
        if ab_bins < 2 or l_bins < 2:
            raise ValueError(f"split-brain needs ab_bins >= 2 and l_bins >= 2 classes, got {ab_bins} and {l_bins}")
        if quantizer.k != ab_bins:
            raise ValueError(f"the colour quantizer has {quantizer.k} centres but ab_bins is {ab_bins}")
        self.encoder, self.quantizer, self.l_bins = encoder, quantizer, l_bins
        half = encoder.embed_dim // 2
        self.head_ab = nn.Conv2d(half, ab_bins, 1)  # on the L half: which (a, b) bin
        self.head_l = nn.Conv2d(half, l_bins, 1)  # on the ab half: which L bin

    @torch.no_grad()
    def targets(self, lab: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lab (B, 3, H, W) -> the (a, b) classes and the L classes of each cell of a map of ``size``
        (h, w), long (B, h, w) each: the Lab values averaged over the cell, then quantised."""
        cells = F.adaptive_avg_pool2d(lab.float(), size)  # (B, 3, h, w)
        return self.quantizer.assign(cells[:, 1:]), l_classes(cells[:, 0], self.l_bins)

    def forward(self, batch: dict) -> dict:
        """batch["input"] (B, 3, H, W) normalised RGB. Returns loss (loss_ab + loss_l, mean cross-entropy
        per cell), loss_ab / acc_ab (the L half's colour classes), loss_l / acc_l (the ab half's L
        classes) and std (of the pooled features)."""
        self.quantizer.check_fitted()
        lab = self.encoder.lab(batch["input"])  # (B, 3, H, W)
        f_l, f_ab = self.encoder.half_maps(lab)  # (B, D / 2, h, w) each
        y_ab, y_l = self.targets(lab, f_l.shape[-2:])  # (B, h, w) each
        logits_ab, logits_l = self.head_ab(f_l).float(), self.head_l(f_ab).float()  # (B, bins, h, w)
        loss_ab, loss_l = F.cross_entropy(logits_ab, y_ab), F.cross_entropy(logits_l, y_l)
        pooled = torch.cat([f_l, f_ab], dim=1).mean(dim=(2, 3))  # (B, D), the encoder's pool
        return {"loss": loss_ab + loss_l, "loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(),
                "acc_ab": (logits_ab.detach().argmax(1) == y_ab).float().mean(),
                "acc_l": (logits_l.detach().argmax(1) == y_l).float().mean(), "std": embedding_std(pooled)}
