"""DenseCL (Wang et al., arXiv:2011.09157): MoCo v2 plus a contrastive loss between feature-map locations.

The global branch is MoCo v2 as ``moco.py`` has it: pooled features, MLP projector, queue, momentum
key encoder, shuffle-BN. The dense branch projects every token of the backbone's feature map (its
S x S locations) with a 1x1-conv MLP -- a Linear on each token -- to 128-d. The two views are
different crops, so cell (i, j) of one grid is not the same place of the image as cell (i, j) of the
other; a query location's positive is instead the key location whose *backbone* feature is most
similar (cosine), the correspondence the network itself sees. Its negatives are a second queue
holding, per key image, the normalised mean of its projected key locations, as the official code
(WXinlong/DenseCL) keeps it. loss = (1 - lambda) * L_global + lambda * L_dense.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.losses import info_nce_logits, positive_first_loss, positive_ranked_first
from mmssl.objectives.heads import embedding_std, mlp, views_of
from mmssl.objectives.moco import MoCo, MoCoSettings, enqueue
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class DenseCLSettings(MoCoSettings):
    """DenseCL's settings (arXiv:2011.09157, Sec. 4): MoCo v2's ImageNet settings, inherited
    (2048-128 projectors, the dense one the same widths; K = 65536, m = 0.999, tau = 0.2, one query
    per pair, shuffle-BN over 32 per GPU), plus the dense loss's weight lambda = 0.5 and a dense
    queue as long as the global one."""

    dense_weight: float = 0.5
    dense_queue_size: int = 65536


def match_locations(h_q: torch.Tensor, h_k: torch.Tensor) -> torch.Tensor:
    """For each query location, the key location of highest cosine similarity.

    Args:
        h_q: (B, Nq, D) backbone tokens of the query view; h_k: (B, Nk, D) of the key view.
    Returns: (B, Nq) long indices into the key's Nk locations.
    """
    sim = F.normalize(h_q, dim=-1) @ F.normalize(h_k, dim=-1).transpose(1, 2)  # (B, Nq, Nk)
    return sim.argmax(dim=2)


@OBJECTIVES.register("densecl")
class DenseCL(MoCo):
    Settings: ClassVar[type] = DenseCLSettings
    pool_features: ClassVar[bool] = False  # the encoders hand over tokens; the heads pool or not
    unsynced_buffers: ClassVar[tuple[str, ...]] = (*MoCo.unsynced_buffers, "dense_queue", "dense_queue_ptr")

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = DenseCLSettings.proj_hidden,
                 proj_dim: int = DenseCLSettings.proj_dim, queue_size: int = DenseCLSettings.queue_size,
                 momentum: float = DenseCLSettings.momentum, temperature: float = DenseCLSettings.temperature,
                 symmetric: bool = DenseCLSettings.symmetric,
                 final_momentum: float | None = DenseCLSettings.final_momentum,
                 shuffle_bn: int = DenseCLSettings.shuffle_bn, dense_weight: float = DenseCLSettings.dense_weight,
                 dense_queue_size: int = DenseCLSettings.dense_queue_size):
        """
        Args:
            encoder: exposes ``forward_features`` (tokens: the feature map's locations), ``pool``
                and ``embed_dim``.
            proj_hidden ... shuffle_bn: MoCo's (see ``MoCo``); the dense projector has the same widths.
            dense_weight: lambda in (1 - lambda) * L_global + lambda * L_dense; 0 is MoCo.
            dense_queue_size: number of negative dense keys kept (one per key image).
        """
        if not 0.0 <= dense_weight <= 1.0 or dense_queue_size < 1:
            raise ValueError(f"DenseCL needs dense_weight in [0, 1] and dense_queue_size >= 1; "
                             f"got {dense_weight}, {dense_queue_size}")
        super().__init__(encoder, proj_hidden=proj_hidden, proj_dim=proj_dim, queue_size=queue_size,
                         momentum=momentum, temperature=temperature, symmetric=symmetric,
                         final_momentum=final_momentum, shuffle_bn=shuffle_bn)
        self.dense_weight = dense_weight
        # 1x1 convolutions on a (B, D, S, S) map are Linear layers on its (B, S * S, D) tokens.
        self.dense_projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=False)
        self.momentum_dense_projector = copy.deepcopy(self.dense_projector).requires_grad_(False)
        self.register_buffer("dense_queue", F.normalize(torch.randn(dense_queue_size, proj_dim), dim=1))
        self.register_buffer("dense_queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_dense: list[torch.Tensor] = []  # gathered pooled dense keys since the last optimizer step

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...). Returns loss, its two parts, acc and acc_dense
        (of the positive among the queue's negatives) and std."""
        x0, x1 = views_of(batch, "densecl")
        # symmetric: q[i] is matched with k[i], both views serve as query once
        query_views, key_views = ([x0, x1], [x1, x0]) if self.symmetric else ([x0], [x1])
        n = len(query_views)
        h = torch.cat(self._features(query_views))  # (nB, N, D) tokens
        q = F.normalize(self.projector(self.encoder.pool(h)), dim=-1)  # (nB, proj_dim)
        q_dense = F.normalize(self.dense_projector(h), dim=-1)  # (nB, N, proj_dim)
        with torch.no_grad():
            h_k = torch.cat(self._key_features(key_views))  # (nB, Nk, D)
            k = F.normalize(self.momentum_projector(self.momentum_encoder.pool(h_k)), dim=-1)  # (nB, proj_dim)
            z_k = self.momentum_dense_projector(h_k)  # (nB, Nk, proj_dim)
            k_dense = F.normalize(z_k, dim=-1)
            k_pooled = F.normalize(z_k.mean(dim=1), dim=-1)  # (nB, proj_dim): the dense queue's entries
            match = match_locations(h.detach(), h_k)  # (nB, N)
            k_pos = k_dense.gather(1, match[..., None].expand(-1, -1, k_dense.shape[-1]))  # (nB, N, proj_dim)
        # Cloned so the in-place enqueue in after_step never touches a tensor autograd saved.
        negatives, dense_negatives = self.queue.clone(), self.dense_queue.clone()
        # Every pair holds B queries (B * N locations), so the mean over the pairs' rows is the mean of their losses.
        # The accuracies read the losses' own logits: the dense ones are B * N rows against the whole queue.
        logits = info_nce_logits(q, k, negatives, self.temperature)
        logits_dense = info_nce_logits(q_dense.flatten(0, 1), k_pos.flatten(0, 1), dense_negatives, self.temperature)
        loss_global, loss_dense = positive_first_loss(logits), positive_first_loss(logits_dense)
        loss = (1 - self.dense_weight) * loss_global + self.dense_weight * loss_dense
        with torch.no_grad():
            acc, acc_dense = positive_ranked_first(logits), positive_ranked_first(logits_dense)
        if self.training:
            self._pending.extend(dist.all_gather_nograd(ki) for ki in k.chunk(n))
            self._pending_dense.extend(dist.all_gather_nograd(ki) for ki in k_pooled.chunk(n))
        return {"loss": loss, "loss_global": loss_global.detach(), "loss_dense": loss_dense.detach(), "acc": acc,
                "acc_dense": acc_dense, "std": embedding_std(q.chunk(n)[0])}

    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [*super()._momentum_pairs(), (self.momentum_dense_projector, self.dense_projector)]

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: MoCo's momentum update and enqueue, then the dense keys' enqueue."""
        super().after_step(step, max_steps)
        if self._pending_dense:
            enqueue(self.dense_queue, self.dense_queue_ptr, torch.cat(self._pending_dense))
            self._pending_dense.clear()
