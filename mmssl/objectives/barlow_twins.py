"""Barlow Twins (Zbontar et al., arXiv:2103.03230).

Two views go through one encoder and a 3-layer projector; each embedding dimension is
standardised over the batch, and the cross-correlation matrix of the two views' embeddings is
pulled towards the identity: its diagonal to 1 (invariance), its off-diagonal to 0 (redundancy
reduction, weighted by lambda). As the paper's code does, the statistics and the
cross-correlation span the global batch: per-process sums are all-reduced with gradients, so
several processes give the loss and gradients of one process on the concatenated batch.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from mmssl import dist
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, encode_views, mlp, views_of
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class BarlowTwinsSettings:
    """Barlow Twins' settings, defaults from the paper (arXiv:2103.03230): its ImageNet projector of three
    8192-wide layers and lambda = 0.0051, the value of the authors' released code."""

    proj_hidden: int = 8192
    proj_dim: int = 8192
    lambd: float = 0.0051  # weight of the redundancy-reduction (off-diagonal) term
    scale_loss: float = 1.0  # a constant factor on the loss (solo-learn's CIFAR recipe uses 0.1)


def _standardise(z: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    """(B, P) -> (B, P) with zero mean and unit (biased) variance per column over the global batch of n
    rows: BatchNorm1d without affine parameters in training mode, as the paper's code (SyncBatchNorm)."""
    mean = dist.all_reduce_with_grad(z.sum(0)) / n  # (P,)
    centred = z - mean
    var = dist.all_reduce_with_grad(centred.pow(2).sum(0)) / n
    return centred / (var + eps).sqrt()


def barlow_twins_loss(z0: torch.Tensor, z1: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 (arXiv:2103.03230, eq. 1).

    C = z0_n^T z1_n / N over the global batch of N = world * B rows, z_n standardised with the global
    batch's mean and variance; each process adds its rows' part of C and the parts are all-reduced.
    The paper's pseudocode divides by z.std(0) (unbiased, no eps); its code and this function use
    BatchNorm's biased variance + eps, which differs by a factor (N - 1) / N on C.

    Args:
        z0, z1: (B, P) this process's projections of the two views.
        lambd: weight of the off-diagonal terms.
        eps: added to the variance, as BatchNorm's.
    Returns: the loss (scalar, fp32 at least), the same on every process.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"barlow_twins_loss expects two (B, P) tensors of one shape, "
                         f"got {tuple(z0.shape)} and {tuple(z1.shape)}")
    n = z0.shape[0] * dist.world_size()
    # fp32 statistics: a P x P sum of N products loses the off-diagonal terms' small values in bf16
    with torch.autocast(z0.device.type, enabled=False):
        z0 = _standardise(z0.to(torch.promote_types(z0.dtype, torch.float32)), n, eps)
        z1 = _standardise(z1.to(torch.promote_types(z1.dtype, torch.float32)), n, eps)
        c = dist.all_reduce_with_grad(z0.t() @ z1 / n)  # (P, P) cross-correlation
        diagonal = torch.diagonal(c)
        on = (diagonal - 1).pow(2).sum()
        off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambd * off


@OBJECTIVES.register("barlow_twins")
class BarlowTwins(Objective):
    Settings: ClassVar[type] = BarlowTwinsSettings

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = BarlowTwinsSettings.proj_hidden,
                 proj_dim: int = BarlowTwinsSettings.proj_dim, lambd: float = BarlowTwinsSettings.lambd,
                 scale_loss: float = BarlowTwinsSettings.scale_loss):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 3-layer projector (BatchNorm + ReLU between layers).
            lambd: weight of the off-diagonal terms.
            scale_loss: constant factor on the loss.
        """
        super().__init__()
        if lambd < 0:
            raise ValueError(f"lambd must be non-negative, not {lambd}")
        if scale_loss <= 0:
            raise ValueError(f"scale_loss must be positive, not {scale_loss}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=3)
        self.lambd, self.scale_loss = lambd, scale_loss

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss and std."""
        h0, h1 = encode_views(self.encoder, views_of(batch, "barlow_twins"))  # (B, D) each
        z0, z1 = self.projector(torch.cat([h0, h1])).chunk(2)  # (B, proj_dim) each
        loss = self.scale_loss * barlow_twins_loss(z0, z1, self.lambd)
        return {"loss": loss, "std": embedding_std(z0)}
