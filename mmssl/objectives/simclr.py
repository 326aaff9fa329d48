"""SimCLR (Chen et al., arXiv:2002.05709).

Two augmented views of each example go through one encoder and an MLP
projector; NT-Xent makes each embedding pick its other view out of all
embeddings of the global batch, gathered from every process with gradients.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from mmssl.losses import nt_xent
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, encode_views, mlp, views_of
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class SimCLRSettings:
    """SimCLR's settings, defaults from the paper (arXiv:2002.05709): its ImageNet setting, a 2048-2048-128
    projector and tau 0.1 (its CIFAR-10 runs, Appendix B.9, prefer 0.5)."""

    proj_hidden: int = 2048
    proj_dim: int = 128
    temperature: float = 0.1
    projector_bn: bool = True


@OBJECTIVES.register("simclr")
class SimCLR(Objective):
    Settings: ClassVar[type] = SimCLRSettings

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = SimCLRSettings.proj_hidden,
                 proj_dim: int = SimCLRSettings.proj_dim, temperature: float = SimCLRSettings.temperature,
                 projector_bn: bool = SimCLRSettings.projector_bn):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 2-layer projector g(h).
            temperature: NT-Xent temperature tau.
            projector_bn: BatchNorm in the projector's hidden layer, as the paper's code.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=projector_bn)
        self.temperature = temperature

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss, acc (of the positive) and std."""
        h0, h1 = encode_views(self.encoder, views_of(batch, "simclr"))  # (B, D) each
        z0, z1 = self.projector(torch.cat([h0, h1])).chunk(2)  # (B, proj_dim) each
        loss, acc = nt_xent(z0, z1, self.temperature, return_accuracy=True)
        return {"loss": loss, "acc": acc, "std": embedding_std(z0)}

