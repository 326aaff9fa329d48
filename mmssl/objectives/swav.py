"""SwAV, Swapping Assignments between Views (Caron et al., arXiv:2006.09882).

Every crop's normalised projection is scored against K learnable unit-norm
prototypes; the global crops' scores are turned into equipartitioned codes by
Sinkhorn-Knopp (over the samples of all processes), and each crop predicts
the codes of the other crops' global views (swapped prediction). Multi-crop:
``batch["views"] = [g0, g1, l0, ..., l_{n-1}]``, global crops first; the
crops of one resolution share an encoder forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses import sinkhorn, swav_loss
from mmssl.objectives.heads import embedding_std, encode_views, mlp, views_of
from mmssl.registry import OBJECTIVES


@OBJECTIVES.register("swav")
class SwAV(nn.Module):
    def __init__(self, encoder: nn.Module, proj_hidden: int = 2048, proj_dim: int = 128, num_prototypes: int = 3000,
                 temperature: float = 0.1, eps: float = 0.05, sinkhorn_iters: int = 3, freeze_prototypes_steps: int = 0,
                 projector_bn: bool = True, global_crops: int = 2):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 2-layer projector.
            num_prototypes: K.
            temperature: softmax temperature of the predictions.
            eps, sinkhorn_iters: Sinkhorn-Knopp regularisation and number of rounds.
            freeze_prototypes_steps: the prototypes get no gradient during the first
                this-many optimizer steps (the paper freezes them for the first epoch).
            projector_bn: BatchNorm in the projector's hidden layer.
            global_crops: how many leading views are global crops (those get codes).
        """
        super().__init__()
        if num_prototypes < 2 or temperature <= 0 or eps <= 0 or sinkhorn_iters < 1:
            raise ValueError(f"SwAV needs num_prototypes >= 2, temperature > 0, eps > 0, sinkhorn_iters >= 1; got "
                             f"{num_prototypes}, {temperature}, {eps}, {sinkhorn_iters}")
        if freeze_prototypes_steps < 0 or global_crops < 1:
            raise ValueError(f"freeze_prototypes_steps must be >= 0 and global_crops >= 1, "
                             f"got {freeze_prototypes_steps}, {global_crops}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=projector_bn)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature, self.eps, self.sinkhorn_iters = temperature, eps, sinkhorn_iters
        self.freeze_prototypes_steps, self.global_crops = freeze_prototypes_steps, global_crops
        # Optimizer steps taken; a buffer so a resumed run keeps the freeze schedule.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._normalize_prototypes()

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [g0, .., g_{G-1}, l0, ...], each (B, ...). Returns loss and std."""
        views = views_of(batch, "swav", count=None)
        if len(views) < max(2, self.global_crops):
            raise ValueError(f"swav expects at least {max(2, self.global_crops)} views, got {len(views)}")
        z = F.normalize(self.projector(torch.cat(encode_views(self.encoder, views))), dim=1)  # (n_crops * B, proj_dim)
        weight = self.prototypes.weight  # (K, proj_dim)
        if self.freeze_prototypes_steps:
            # Decided on the device (no host read of the step). While frozen the prototypes get a
            # zero gradient rather than none: they stay in the graph, so DDP
            # (find_unused_parameters=False) still finds a gradient for every parameter.
            weight = torch.where(self.steps_done < self.freeze_prototypes_steps, weight.detach(), weight)
        scores = list((z @ weight.t()).chunk(len(views)))  # n_crops x (B, K) cosine scores
        codes = [sinkhorn(s, self.eps, self.sinkhorn_iters) for s in scores[: self.global_crops]]
        loss = swav_loss(scores, codes, self.temperature, self.global_crops)
        return {"loss": loss, "std": embedding_std(z.chunk(len(views))[0])}

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: prototypes back onto the unit sphere; count the step."""
        self._normalize_prototypes()
        self.steps_done.fill_(step)

    def export_encoder(self) -> nn.Module:
        return self.encoder
