"""BYOL, Bootstrap Your Own Latent (Grill et al., arXiv:2006.07733).

The online network (encoder -> projector -> predictor) regresses the target
network's projection of the other view; the target is an exponential moving
average of the online encoder and projector, updated only in ``after_step``
with BYOL's cosine momentum schedule. No negatives are needed.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch
from torch import nn

from mmssl.losses import negative_cosine
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import ema_update, embedding_std, encode_views, mlp, views_of
from mmssl.optim import cosine
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class BYOLSettings:
    """BYOL's settings, defaults from the paper (arXiv:2006.07733): a 4096-256 projector, a 4096-wide
    predictor and tau_base = 0.996 (``base_momentum``), set for its 300k-step ImageNet runs."""

    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    base_momentum: float = 0.996


@OBJECTIVES.register("byol")
class BYOL(Objective):
    Settings: ClassVar[type] = BYOLSettings

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = BYOLSettings.proj_hidden,
                 proj_dim: int = BYOLSettings.proj_dim, pred_hidden: int = BYOLSettings.pred_hidden,
                 base_momentum: float = BYOLSettings.base_momentum):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 2-layer projector (BatchNorm in the hidden layer).
            pred_hidden: hidden width of the 2-layer predictor (proj_dim -> proj_dim).
            base_momentum: tau_base of the cosine schedule.
        """
        super().__init__()
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"base_momentum must be in [0, 1], not {base_momentum}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, layers=2)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum = base_momentum

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss (symmetric, in [0, 8]) and std."""
        views = views_of(batch, "byol")
        z = self.projector(torch.cat(encode_views(self.encoder, views)))  # (2B, proj_dim)
        p0, p1 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t0, t1 = self.target_projector(torch.cat(encode_views(self.target_encoder, views))).chunk(2)
        # ||p/|p| - t/|t|||^2 = 2 - 2 cos(p, t); the paper sums the loss and its view-swapped twin.
        loss = (2 + 2 * negative_cosine(p0, t1)) + (2 + 2 * negative_cosine(p1, t0))
        return {"loss": loss, "std": embedding_std(z.chunk(2)[0])}

    def momentum_at(self, step: int, max_steps: int) -> float:
        """tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2: tau_base at k = 0, rising to 1 at k = K."""
        return cosine(self.base_momentum, 1.0, step / max(max_steps, 1))

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: target <- tau * target + (1 - tau) * online, tau from the schedule at ``step``."""
        ema_update([(self.target_encoder, self.encoder), (self.target_projector, self.projector)],
                   self.momentum_at(step, max_steps))

