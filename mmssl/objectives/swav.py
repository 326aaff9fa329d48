"""SwAV, Swapping Assignments between Views (Caron et al., arXiv:2006.09882).

Every crop's normalised projection is scored against K learnable unit-norm
prototypes; the global crops' scores are turned into equipartitioned codes by
Sinkhorn-Knopp (over the samples of all processes), and each crop predicts
the codes of the other crops' global views (swapped prediction). Multi-crop:
``batch["views"] = [g0, g1, l0, ..., l_{n-1}]``, global crops first; the
crops of one resolution share an encoder forward.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses import sinkhorn, swav_loss
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, encode_views, mlp, target_entropy, views_of
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class SwAVSettings:
    """SwAV's settings, defaults from the paper (arXiv:2006.09882): a 2048-128 projector, K = 3000
    prototypes, tau = 0.1, Sinkhorn-Knopp with eps = 0.05 for 3 iterations, two global crops and, as in
    its batch-4096 runs, no queue. The paper freezes the prototypes for the first epoch; an epoch's
    length in steps depends on the data, so a recipe sets ``freeze_prototypes_steps`` (0: never frozen)."""

    proj_hidden: int = 2048
    proj_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    eps: float = 0.05
    sinkhorn_iters: int = 3
    freeze_prototypes_steps: int = 0
    projector_bn: bool = True
    queue_size: int = 0
    queue_start_steps: int = 0


_S = SwAVSettings  # the constructor's defaults are the settings' own


@OBJECTIVES.register("swav")
class SwAV(Objective):
    Settings: ClassVar[type] = SwAVSettings
    # Each process queues its own embeddings, as the paper does per GPU; checkpoints keep every process's.
    unsynced_buffers: ClassVar[tuple[str, ...]] = ("queue",)
    per_process_buffers: ClassVar[tuple[str, ...]] = ("queue",)
    extra_metrics: ClassVar[tuple[str, ...]] = ("target_entropy",)  # the codes' mean entropy: see forward

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = _S.proj_hidden, proj_dim: int = _S.proj_dim,
                 num_prototypes: int = _S.num_prototypes, temperature: float = _S.temperature, eps: float = _S.eps,
                 sinkhorn_iters: int = _S.sinkhorn_iters, freeze_prototypes_steps: int = _S.freeze_prototypes_steps,
                 projector_bn: bool = _S.projector_bn, global_crops: int = 2,
                 queue_size: int = _S.queue_size, queue_start_steps: int = _S.queue_start_steps):
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
            queue_size: embeddings of earlier batches kept per global crop (0: none). Once the
                queue is full and ``queue_start_steps`` optimizer steps are done, Sinkhorn runs
                over the batch and the queue together, and the batch keeps its rows of the codes:
                the paper's remedy for batches much smaller than the number of prototypes.
        """
        super().__init__()
        if num_prototypes < 2 or temperature <= 0 or eps <= 0 or sinkhorn_iters < 1:
            raise ValueError(f"SwAV needs num_prototypes >= 2, temperature > 0, eps > 0, sinkhorn_iters >= 1; got "
                             f"{num_prototypes}, {temperature}, {eps}, {sinkhorn_iters}")
        if freeze_prototypes_steps < 0 or global_crops < 1 or queue_size < 0 or queue_start_steps < 0:
            raise ValueError(f"freeze_prototypes_steps, queue_size and queue_start_steps must be >= 0 and "
                             f"global_crops >= 1, got {freeze_prototypes_steps}, {queue_size}, "
                             f"{queue_start_steps} and {global_crops}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=projector_bn)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature, self.eps, self.sinkhorn_iters = temperature, eps, sinkhorn_iters
        self.freeze_prototypes_steps, self.global_crops = freeze_prototypes_steps, global_crops
        # Optimizer steps taken; a buffer so a resumed run keeps the freeze schedule.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # The queue (newest first) and how many embeddings have entered it; buffers, so a resumed
        # run continues with the same queue.
        self.queue_size, self.queue_start_steps = queue_size, queue_start_steps
        self.register_buffer("queue", torch.zeros(global_crops, queue_size, proj_dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self._pending: list[torch.Tensor] = []  # (G, B, proj_dim) per micro-batch, enqueued after the step
        # Host copies of (steps_done, queue_count): whether the queue is used decides tensor
        # shapes, and reading the buffers every step would be a device sync. Refreshed after a load.
        self._host_counts: tuple[int, int] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host_counts", None))
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
        B = scores[0].shape[0]
        if self.queue_size and self.training:
            self._pending.append(z.detach()[: self.global_crops * B].reshape(self.global_crops, B, -1))
        if self.queue_size and self._queue_in_use():
            queued = self.queue @ weight.detach().t()  # (G, Q, K)
            codes = [sinkhorn(torch.cat([s.detach(), q]), self.eps, self.sinkhorn_iters)[:B]
                     for s, q in zip(scores[: self.global_crops], queued)]
        else:
            codes = [sinkhorn(s, self.eps, self.sinkhorn_iters) for s in scores[: self.global_crops]]
        loss = swav_loss(scores, codes, self.temperature, self.global_crops)
        # Sinkhorn spreads the codes evenly over the prototypes (their usage stays near K), so the
        # collapse to watch is the other one: target_entropy near log K, the embeddings no longer
        # telling the prototypes apart
        return {"loss": loss, "std": embedding_std(z.chunk(len(views))[0]), "target_entropy": target_entropy(torch.cat(codes))}

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def _queue_in_use(self) -> bool:
        if self._host_counts is None:  # once per (re)load, not per step
            self._host_counts = (int(self.steps_done), int(self.queue_count))
        steps, count = self._host_counts
        return steps >= self.queue_start_steps and count >= self.queue_size

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        """z (G, n, proj_dim) to the front of the queue; the oldest fall off the end."""
        n = min(z.shape[1], self.queue_size)
        self.queue.copy_(torch.cat([z[:, :n].to(self.queue.dtype), self.queue[:, : self.queue_size - n]], dim=1))

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: prototypes back onto the unit sphere; the step's embeddings
        (every micro-batch's) into the queue; count the step."""
        self._normalize_prototypes()
        self.steps_done.fill_(step)
        added = 0
        if self.queue_size and self._pending:
            z = torch.cat(self._pending, dim=1)
            self._pending.clear()
            self._enqueue(z)
            added = z.shape[1]
            self.queue_count.add_(added)
        if self._host_counts is not None:
            self._host_counts = (step, self._host_counts[1] + added)

