"""VICReg, Variance-Invariance-Covariance Regularization (Bardes et al., arXiv:2105.04906).

Two views go through one encoder and a 3-layer expander. The loss pulls each pair of embeddings
together (invariance: mean squared error), keeps every embedding dimension's standard deviation
over the batch above gamma (variance: a hinge) and decorrelates the dimensions (covariance: the
squared off-diagonal covariances / D). Variance and covariance span the global batch: the
embeddings of all processes are gathered with gradients.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, encode_views, mlp, views_of
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class VICRegSettings:
    """VICReg's settings, defaults from the paper (arXiv:2105.04906): a 3-layer 8192-wide expander,
    lambda = mu = 25, nu = 1, gamma = 1 and eps = 1e-4 in the standard deviation."""

    proj_hidden: int = 8192
    proj_dim: int = 8192
    sim_coeff: float = 25.0  # lambda, invariance
    std_coeff: float = 25.0  # mu, variance
    cov_coeff: float = 1.0  # nu, covariance
    gamma: float = 1.0  # target standard deviation of every dimension
    eps: float = 1e-4


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = mean_j relu(gamma - sqrt(Var(z_j) + eps)) for z (N, D), unbiased variance over the N rows."""
    return F.relu(gamma - (z.var(dim=0) + eps).sqrt()).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = sum_{i != j} C(Z)_ij^2 / D for z (N, D), C the (D, D) unbiased covariance over the rows."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.t() @ z / (n - 1)  # (D, D)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_loss(z0: torch.Tensor, z1: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')] (arXiv:2105.04906, eq. 6 and Algorithm 1).

    The authors' code (and lightly's ``VICRegLoss``) halves the variance term, mu [v(Z) + v(Z')] / 2;
    this follows the paper's equation and pseudocode.

    Args:
        z0, z1: (B, D) this process's embeddings of the two views.
    Returns: {"loss": scalar, "invariance", "variance", "covariance": the unweighted terms, detached}.
        The invariance term is this process's mean (DDP's average of the gradients makes it the global
        batch's); variance and covariance are computed over the global batch on every process.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"vicreg_loss expects two (B, D) tensors of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.shape[0] * dist.world_size() < 2:
        raise ValueError("vicreg_loss needs at least 2 rows in the global batch for a variance")
    # fp32: the covariance sums N products per entry, too coarse in bf16
    with torch.autocast(z0.device.type, enabled=False):
        z0, z1 = (z.to(torch.promote_types(z.dtype, torch.float32)) for z in (z0, z1))
        invariance = F.mse_loss(z0, z1)
        g0, g1 = dist.all_gather(z0), dist.all_gather(z1)  # (N, D) the global batch, with gradients
        variance = variance_term(g0, gamma, eps) + variance_term(g1, gamma, eps)
        covariance = covariance_term(g0) + covariance_term(g1)
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
            "covariance": covariance.detach()}


@OBJECTIVES.register("vicreg")
class VICReg(Objective):
    Settings: ClassVar[type] = VICRegSettings
    extra_metrics: ClassVar[tuple[str, ...]] = ("invariance", "variance", "covariance")

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = VICRegSettings.proj_hidden,
                 proj_dim: int = VICRegSettings.proj_dim, sim_coeff: float = VICRegSettings.sim_coeff,
                 std_coeff: float = VICRegSettings.std_coeff, cov_coeff: float = VICRegSettings.cov_coeff,
                 gamma: float = VICRegSettings.gamma, eps: float = VICRegSettings.eps):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 3-layer expander (BatchNorm + ReLU between layers).
            sim_coeff, std_coeff, cov_coeff: lambda, mu and nu, the weights of the three terms.
            gamma: target standard deviation; eps: added to the variance before the square root.
        """
        super().__init__()
        if min(sim_coeff, std_coeff, cov_coeff) < 0:
            raise ValueError(f"the coefficients must be non-negative, got {sim_coeff}, {std_coeff}, {cov_coeff}")
        if gamma <= 0 or eps <= 0:
            raise ValueError(f"gamma and eps must be positive, got {gamma} and {eps}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=3)
        self.coeffs = {"sim_coeff": sim_coeff, "std_coeff": std_coeff, "cov_coeff": cov_coeff, "gamma": gamma,
                       "eps": eps}

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss, its three terms and std."""
        h0, h1 = encode_views(self.encoder, views_of(batch, "vicreg"))  # (B, D) each
        z0, z1 = self.projector(torch.cat([h0, h1])).chunk(2)  # (B, proj_dim) each
        return {**vicreg_loss(z0, z1, **self.coeffs), "std": embedding_std(z0)}
