"""Supervised contrastive learning, SupCon (Khosla et al., arXiv:2004.11362).

Two augmented views of each example go through one encoder and an MLP projector; each
embedding's positives are all other embeddings with its label (its own other view among them),
on every process (gathered with gradients), its candidates all other embeddings. The loss is
the paper's L_out^sup (eq. 2): the mean over the positives sits outside the log. With one
positive per anchor (every label once per batch) it is SimCLR's NT-Xent.
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
class SupConSettings:
    """SupCon's settings, defaults from the paper (arXiv:2004.11362): a projection network with one 2048-wide
    hidden layer and a 128-d output, and tau = 0.1 (the authors' released code defaults to 0.07)."""

    proj_hidden: int = 2048
    proj_dim: int = 128
    temperature: float = 0.1
    projector_bn: bool = False  # the paper's projection network has no BatchNorm


def supcon_loss(z0: torch.Tensor, z1: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                return_accuracy: bool = False):
    """L_out^sup = sum_i -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) ).

    Anchors are this process's 2B embeddings; candidates A(i) are all other embeddings of both
    views on ALL processes, P(i) those of them with anchor i's label. A negative label means
    unlabelled: such an item's only positive is its own other view. The mean over local anchors,
    averaged across processes by DDP, equals one process on the global batch.

    Args:
        z0, z1: (B, D) the two views' embeddings on this process (normalised here).
        labels: (B,) integer labels of the examples, -1 for none.
        temperature: tau.
        return_accuracy: also return how often the best-scoring candidate is a positive.
    Returns: the mean loss over the 2B local anchors (scalar), and with ``return_accuracy`` a
        detached accuracy (scalar).
    """
    if z0.shape != z1.shape or z0.dim() != 2 or labels.shape != z0.shape[:1]:
        raise ValueError(f"supcon_loss expects two (B, D) tensors of one shape and (B,) labels, got "
                         f"{tuple(z0.shape)}, {tuple(z1.shape)} and {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    B, world = z0.shape[0], dist.world_size()
    z0, z1 = F.normalize(z0, dim=-1), F.normalize(z1, dim=-1)
    anchors = torch.cat([z0, z1])  # (2B, D)
    candidates = torch.cat([dist.all_gather(z0), dist.all_gather(z1)])  # (2 * world * B, D): view 0, then view 1
    everyone = dist.all_gather_nograd(labels.long())  # (world * B,)
    index = torch.arange(world * B, device=labels.device)
    everyone = torch.where(everyone >= 0, everyone, -1 - index)  # unlabelled: a class of its own
    candidate_labels = torch.cat([everyone, everyone])  # (2 * world * B,)
    i = torch.arange(B, device=z0.device) + dist.rank() * B
    self_index = torch.cat([i, i + world * B])  # where each anchor sits among the candidates
    rows = torch.arange(2 * B, device=z0.device)
    logits = (anchors @ candidates.t()).to(torch.promote_types(anchors.dtype, torch.float32)) / temperature
    logits[rows, self_index] = float("-inf")  # an anchor is never its own candidate
    positive = candidate_labels[self_index][:, None] == candidate_labels[None]  # (2B, 2 * world * B)
    positive[rows, self_index] = False
    log_prob = logits.log_softmax(dim=1)
    loss = -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1)).mean()
    if not return_accuracy:
        return loss
    acc = positive[rows, logits.detach().argmax(dim=1)].float().mean()
    return loss, acc


@OBJECTIVES.register("supcon")
class SupCon(Objective):
    Settings: ClassVar[type] = SupConSettings

    def __init__(self, encoder: nn.Module, *, proj_hidden: int = SupConSettings.proj_hidden,
                 proj_dim: int = SupConSettings.proj_dim, temperature: float = SupConSettings.temperature,
                 projector_bn: bool = SupConSettings.projector_bn):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            proj_hidden, proj_dim: widths of the 2-layer projection network.
            temperature: tau.
            projector_bn: BatchNorm in the projector's hidden layer.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        self.encoder = encoder
        self.projector = mlp(encoder.embed_dim, proj_hidden, proj_dim, layers=2, batch_norm=projector_bn)
        self.temperature = temperature

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [x0, x1], each (B, ...); batch["label"] (B,) integers, -1 for none.
        Returns loss, acc (the top candidate shares the anchor's label) and std."""
        views = views_of(batch, "supcon")
        labels = batch.get("label")
        if not torch.is_tensor(labels) or labels.shape != (views[0].shape[0],):
            raise ValueError("supcon expects batch['label'], one integer label per example")
        h0, h1 = encode_views(self.encoder, views)  # (B, D) each
        z0, z1 = self.projector(torch.cat([h0, h1])).chunk(2)  # (B, proj_dim) each
        loss, acc = supcon_loss(z0, z1, labels, self.temperature, return_accuracy=True)
        return {"loss": loss, "acc": acc, "std": embedding_std(z0)}
