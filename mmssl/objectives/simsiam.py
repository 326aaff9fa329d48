"""SimSiam (Chen & He, arXiv:2011.10566).

One encoder + 3-layer projector f embeds both views; a 2-layer predictor h
maps one view's z to the other's, whose z is treated as a constant
(stop-gradient). No negatives, no momentum encoder: the stop-gradient alone
prevents collapse, which the "std" metric watches.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from mmssl.losses import negative_cosine
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, encode_views, mlp, views_of
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class SimSiamSettings:
    """SimSiam's settings, defaults from the paper (arXiv:2011.10566): a 3-layer 2048-d projector and a
    predictor with a 512-d bottleneck (a quarter of the projector's width)."""

    proj_dim: int = 2048
    pred_hidden: int = 512


@OBJECTIVES.register("simsiam")
class SimSiam(Objective):
    Settings: ClassVar[type] = SimSiamSettings

    def __init__(self, encoder: nn.Module, *, proj_dim: int = SimSiamSettings.proj_dim,
                 pred_hidden: int = SimSiamSettings.pred_hidden):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_dim: width of the projector's hidden and output layers (BatchNorm on all three).
            pred_hidden: the predictor's bottleneck width (proj_dim -> pred_hidden -> proj_dim).
        """
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_dim, proj_dim, layers=3, last_bn=True)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, layers=2)

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss (in [-1, 1]) and std."""
        z = self.projector(torch.cat(encode_views(self.encoder, views_of(batch, "simsiam"))))  # (2B, proj_dim)
        p0, p1 = self.predictor(z).chunk(2)
        z0, z1 = z.chunk(2)
        loss = (negative_cosine(p0, z1) + negative_cosine(p1, z0)) / 2  # z detached inside
        return {"loss": loss, "std": embedding_std(z0)}

