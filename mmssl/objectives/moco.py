"""MoCo v2 (He et al., arXiv:1911.05722; Chen et al., arXiv:2003.04297).

A query q from the online encoder + MLP projector must pick its key k, the
other view embedded by a momentum (EMA) copy of both, out of k and a queue of
keys from earlier batches. The queue and the momentum copy change only in
``after_step``, once per optimizer step; the keys of every micro-batch since the
last step (from all processes) are held until then.

BatchNorm leaks: a query and its positive key normalised with the statistics
of the same samples share a batch signature that the queue's keys (from earlier
batches) lack, and training can learn to spot it instead of the image. Shuffle-BN
(the MoCo paper, Sec. 3.3) breaks the link: each process encodes every view in
groups of ``shuffle_bn`` samples, each group normalised by its own statistics,
and the key batch of all processes is permuted (one permutation, shared) before
it is split, so a query's group and its key's group hold different samples. On
one process the groups stand in for the paper's GPUs; on several GPUs the
BatchNorm statistics stay per process (no SyncBatchNorm), as the paper's are.
Encoders without BatchNorm (ViT, GroupNorm convs) are unaffected by it. The
groups go through the encoder in one pass whose BatchNorm layers split the
batch (``batchnorm_groups``): the same numbers as a pass per group, in larger
operations.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.losses import info_nce
from mmssl.objectives.base import Objective
from mmssl.objectives.batchnorm_groups import batchnorm_groups, groupable
from mmssl.objectives.heads import ema_update, embedding_std, encode_views, mlp, views_of
from mmssl.optim import cosine
from mmssl.registry import OBJECTIVES


def group_sizes(batch: int, groups: int) -> list[int]:
    """Sizes of ``groups`` near-equal consecutive pieces of a batch, as ``Tensor.tensor_split`` cuts them."""
    return [batch // groups + (i < batch % groups) for i in range(groups)]


def _grouped(encoder: nn.Module, x: torch.Tensor, sizes: list[int], pool: bool = True) -> torch.Tensor:
    """Pooled features (B, D), or tokens (B, N, D) if not ``pool``, of x (B, ...) encoded so that
    BatchNorm normalises each consecutive group of ``sizes`` samples with its own statistics: one pass
    with the BatchNorm layers split (``batchnorm_groups``), or a pass per group where a layer cannot be
    split (SyncBatchNorm) or where the pass is being compiled (the split swaps the layers' forward for the
    pass's duration, which torch.compile does not trace)."""
    if groupable(encoder) and not torch.compiler.is_compiling():
        with batchnorm_groups(encoder, sizes):
            h = encoder.forward_features(x)
        return encoder.pool(h) if pool else h
    parts = [encoder.forward_features(part) for part in x.split(sizes)]
    return torch.cat([encoder.pool(h) for h in parts] if pool else parts)


def _grouped_views(encoder: nn.Module, views: list[torch.Tensor], groups: int, pool: bool) -> list[torch.Tensor]:
    """``_grouped`` of each view, each cut into ``groups`` pieces; views of one shape share a pass."""
    if any(v.shape != views[0].shape for v in views):
        return [_grouped(encoder, v, group_sizes(len(v), groups), pool) for v in views]
    sizes = [s for v in views for s in group_sizes(len(v), groups)]
    return list(_grouped(encoder, torch.cat(views), sizes, pool).chunk(len(views)))


@torch.compiler.disable
def _shared_permutation(n: int, device: torch.device) -> torch.Tensor:
    """A permutation of range(n) drawn on process 0 and broadcast. Outside any compiled graph: inductor's
    joint-graph pattern pass fails on a randperm that indexes inside it (pytorch/pytorch#188223)."""
    return dist.broadcast(torch.randperm(n, device=device))


def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write keys (N, dim) into the ring buffer queue (Q, dim) at ptr, oldest first; wraps around,
    keeps the last Q if N > Q. The pointer (a 0-d long tensor) stays on the device: no host read per step."""
    size, n = queue.shape[0], keys.shape[0]
    skip = max(n - size, 0)  # only the newest Q keys would survive anyway
    idx = (ptr + skip + torch.arange(n - skip, device=keys.device)) % size
    queue[idx] = keys[skip:].to(queue.dtype)
    ptr.add_(n).remainder_(size)


@dataclasses.dataclass(frozen=True)
class MoCoSettings:
    """MoCo v2's settings, defaults from the paper (arXiv:2003.04297, on MoCo arXiv:1911.05722): a
    2048-128 MLP projector, a queue of K = 65536 keys, m = 0.999, tau = 0.2, one query per pair,
    constant momentum, and shuffle-BN over the per-GPU batch of 32 (256 on 8 GPUs)."""

    proj_hidden: int = 2048
    proj_dim: int = 128
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    symmetric: bool = False
    final_momentum: float | None = None
    shuffle_bn: int = 32


@OBJECTIVES.register("moco")
class MoCo(Objective):
    Settings: ClassVar[type] = MoCoSettings
    # every process enqueues the same gathered keys
    unsynced_buffers: ClassVar[tuple[str, ...]] = ("queue", "queue_ptr")
    # What the encoders hand the heads: pooled features; a dense subclass (DenseCL) takes the tokens.
    pool_features: ClassVar[bool] = True

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = MoCoSettings.proj_hidden,
                 proj_dim: int = MoCoSettings.proj_dim, queue_size: int = MoCoSettings.queue_size,
                 momentum: float = MoCoSettings.momentum, temperature: float = MoCoSettings.temperature,
                 symmetric: bool = MoCoSettings.symmetric, final_momentum: float | None = MoCoSettings.final_momentum,
                 shuffle_bn: int = MoCoSettings.shuffle_bn):
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
            shuffle_bn: 0 encodes each process's batch in one piece (one forward for all views).
                S > 0 is shuffle-BN with groups of about S samples: each view's local batch of B
                goes through the encoders in max(1, B // S) groups; the keys' global batch is
                permuted first (the permutation is drawn on process 0 and broadcast).
        """
        super().__init__()
        if queue_size < 1 or not 0.0 <= momentum <= 1.0 or temperature <= 0 or not 0.0 <= (final_momentum or 0) <= 1:
            raise ValueError(f"MoCo needs queue_size >= 1, momentum and final_momentum in [0, 1] and temperature > 0; "
                             f"got {queue_size}, {momentum}, {final_momentum}, {temperature}")
        if shuffle_bn < 0:
            raise ValueError(f"shuffle_bn is a group size (0: off), not {shuffle_bn}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=False)
        self.momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum, self.temperature, self.symmetric = momentum, temperature, symmetric
        self.final_momentum, self.shuffle_bn = final_momentum, shuffle_bn
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))  # (Q, proj_dim)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[torch.Tensor] = []  # gathered keys of micro-batches since the last optimizer step

    @property
    def sync_batchnorm(self) -> bool:
        # Shuffle-BN normalises each process's (or group's) samples by their own statistics, as the
        # paper's per-GPU BatchNorm does; SyncBatchNorm would pool them over every process.
        return not self.shuffle_bn

    def _groups(self, batch: int) -> int:
        return max(1, batch // self.shuffle_bn)

    def _features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The online encoder's pooled features (B, D) of each view, or its tokens (B, N, D) for
        an objective that reads the feature map (``pool_features`` False)."""
        if self.shuffle_bn:
            return _grouped_views(self.encoder, views, self._groups(len(views[0])), self.pool_features)
        return encode_views(self.encoder, views, pool=self.pool_features)

    @torch.no_grad()
    def _key_features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The momentum encoder's features of each view, as ``_features`` (shuffle-BN when on): each
        view's global batch is gathered and permuted, this process encodes its shard of every view in
        groups, and the features travel back to their images."""
        if not self.shuffle_bn:
            return encode_views(self.momentum_encoder, views, pool=self.pool_features)
        world, rank = dist.world_size(), dist.rank()
        shards, perms = [], []
        for v in views:
            full = dist.all_gather_nograd(v)  # (world * B, ...)
            perm = _shared_permutation(len(full), v.device)
            shards.append(full[perm].chunk(world)[rank])
            perms.append(perm)
        h = _grouped_views(self.momentum_encoder, shards, self._groups(len(views[0])), self.pool_features)
        return [dist.all_gather_nograd(hv)[torch.argsort(perm)].chunk(world)[rank] for hv, perm in zip(h, perms)]

    def _queries(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        h = self._features(views)
        return list(F.normalize(self.projector(torch.cat(h)), dim=1).chunk(len(views)))

    @torch.no_grad()
    def _keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        h = self._key_features(views)
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
        return cosine(self.momentum, self.final_momentum, step / max(max_steps, 1))

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: momentum update, then enqueue the pending keys."""
        ema_update(self._momentum_pairs(), self.momentum_at(step, max_steps))
        if self._pending:
            self._enqueue(torch.cat(self._pending))
            self._pending.clear()

    def _momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(momentum copy, online module) pairs that ``after_step`` moves together."""
        return [(self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)]

    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (N, proj_dim) into the queue (see ``enqueue``)."""
        enqueue(self.queue, self.queue_ptr, keys)
