"""RotNet, rotation prediction (Gidaris et al., arXiv:1803.07728).

Every image is shown in all its rotations (0, 90, 180, 270 degrees) in one
forward, and a linear head on the pooled features classifies the rotation.
Images only: rotations by multiples of 90 degrees need square images.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class RotNetSettings:
    """RotNet's settings, defaults from the paper (arXiv:1803.07728): four rotations, multiples of 90 degrees."""

    num_classes: int = 4


@OBJECTIVES.register("rotnet")
class RotNet(Objective):
    Settings: ClassVar[type] = RotNetSettings
    single_view = True

    def __init__(self, encoder: nn.Module, *, num_classes: int = RotNetSettings.num_classes):
        """
        Args:
            encoder: an image encoder exposing ``forward_features``, ``pool`` and ``embed_dim``.
            num_classes: 4 (multiples of 90 degrees, the paper's choice) or 2 (0 and 180 degrees).
        """
        super().__init__()
        if num_classes not in (2, 4):
            raise ValueError(f"RotNet supports 2 or 4 rotation classes, not {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.head = nn.Linear(encoder.embed_dim, num_classes)

    def rotate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All rotations of a batch, grouped by rotation.

        Args:
            x: (B, C, H, W) images with H == W.
        Returns: images (num_classes * B, C, H, W), where block r (rows r*B .. r*B+B-1)
            is ``torch.rot90(x, r * 4 // num_classes, dims=(2, 3))`` (counter-clockwise),
            and labels (num_classes * B,) equal to r in block r.
        """
        if x.dim() != 4:
            raise ValueError(f"RotNet expects images (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"RotNet needs square images to rotate by 90 degrees, got {x.shape[-2]}x{x.shape[-1]}")
        quarter_turns = 4 // self.num_classes
        images = torch.cat([torch.rot90(x, r * quarter_turns, dims=(2, 3)) for r in range(self.num_classes)])
        labels = torch.arange(self.num_classes, device=x.device).repeat_interleave(x.shape[0])
        return images, labels

    def forward(self, batch: dict) -> dict:
        """batch["input"] = (B, C, H, W) images. Returns loss, acc (rotation accuracy) and std."""
        images, labels = self.rotate(batch["input"])
        h = self.encoder.pool(self.encoder.forward_features(images))  # (num_classes * B, D)
        logits = self.head(h).float()
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "acc": acc, "std": embedding_std(h)}

