"""MoCo v2 (He et al., arXiv:1911.05722; Chen et al., arXiv:2003.04297).

A query q from the online encoder + MLP projector must pick its key k, the
other view embedded by a momentum (EMA) copy of both, out of k and a queue of
keys from earlier batches. The queue and the momentum copy change only in
``after_step``, once per optimizer step; the keys of every micro-batch since the
last step (from all processes) are held until then.

BatchNorm: the paper shuffles the key batch across GPUs (shuffle-BN) so that
batch statistics cannot leak the positive; we do not. Encoders without
BatchNorm (ViT, GroupNorm convs) need nothing; with BatchNorm use
SyncBatchNorm, which the trainer turns on when distributed on GPUs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.losses import info_nce
from mmssl.objectives.byol import cosine_momentum
from mmssl.objectives.heads import embedding_std, encode_views, mlp, views_of
from mmssl.registry import OBJECTIVES


@OBJECTIVES.register("moco")
class MoCo(nn.Module):
    def __init__(self, encoder: nn.Module, proj_hidden: int = 2048, proj_dim: int = 128, queue_size: int = 4096,
                 momentum: float = 0.99, temperature: float = 0.2, symmetric: bool = False,
                 final_momentum: float | None = None):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 2-layer MLP projector (no BatchNorm, as MoCo v2).
            queue_size: number of negative keys kept.
            momentum: m in k_params <- m * k_params + (1 - m) * q_params.
            temperature: InfoNCE temperature.
            symmetric: also predict view 0's key from view 1's query and average the two
                losses; both views' keys are then enqueued.
            final_momentum: None keeps m constant; a number raises m from ``momentum`` to it
                on a cosine over the run (solo-learn's MoCo v2+: 0.99 to 0.999).
        """
        super().__init__()
        if queue_size < 1 or not 0.0 <= momentum <= 1.0 or temperature <= 0 or not 0.0 <= (final_momentum or 0) <= 1:
            raise ValueError(f"MoCo needs queue_size >= 1, momentum and final_momentum in [0, 1] and temperature > 0; "
                             f"got {queue_size}, {momentum}, {final_momentum}, {temperature}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=False)
        self.momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum, self.temperature, self.symmetric = momentum, temperature, symmetric
        self.final_momentum = final_momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))  # (Q, proj_dim)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[torch.Tensor] = []  # gathered keys of micro-batches since the last optimizer step

    def _queries(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        h = encode_views(self.encoder, views)
        return list(F.normalize(self.projector(torch.cat(h)), dim=1).chunk(len(views)))

    @torch.no_grad()
    def _keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        h = encode_views(self.momentum_encoder, views)
        return list(F.normalize(self.momentum_projector(torch.cat(h)), dim=1).chunk(len(views)))

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss, acc (of the positive) and std."""
        x0, x1 = views_of(batch, "moco")
        if self.symmetric:
            q, k = self._queries([x0, x1]), self._keys([x1, x0])  # q[i] is matched with k[i]
        else:
            q, k = self._queries([x0]), self._keys([x1])
        # Cloned so the in-place enqueue in after_step never touches a tensor autograd saved.
        negatives = self.queue.clone()  # (Q, proj_dim)
        loss = sum(info_nce(qi, ki, negatives, self.temperature) for qi, ki in zip(q, k)) / len(q)
        with torch.no_grad():
            pos = (q[0] * k[0]).sum(dim=1)
            acc = (pos > (q[0] @ negatives.t()).max(dim=1).values).float().mean()
        if self.training:
            self._pending.extend(dist.all_gather_nograd(ki) for ki in k)
        return {"loss": loss, "acc": acc, "std": embedding_std(q[0])}

    def momentum_at(self, step: int, max_steps: int) -> float:
        if self.final_momentum is None:
            return self.momentum
        return cosine_momentum(step, max_steps, self.momentum, self.final_momentum)

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: momentum update, then enqueue the pending keys."""
        tau = self.momentum_at(step, max_steps)
        for target, online in ((self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)):
            for pt, po in zip(target.parameters(), online.parameters()):
                pt.lerp_(po.detach(), 1.0 - tau)
        if self._pending:
            self._enqueue(torch.cat(self._pending))
            self._pending.clear()

    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (N, proj_dim) into the ring buffer, oldest first; wraps around, keeps the last Q if N > Q."""
        size, n = self.queue.shape[0], keys.shape[0]
        skip = max(n - size, 0)  # only the newest Q keys would survive anyway
        # The pointer stays on the device: no host read per step.
        idx = (self.queue_ptr + skip + torch.arange(n - skip, device=keys.device)) % size
        self.queue[idx] = keys[skip:].to(self.queue.dtype)
        self.queue_ptr.add_(n).remainder_(size)

    def export_encoder(self) -> nn.Module:
        return self.encoder
