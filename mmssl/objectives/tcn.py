"""Time-contrastive networks (Sermanet et al., arXiv:1704.06888).

A frame and its positive (the same moment seen by another camera, or a frame within a
small window of it in the same video) are pulled together in an L2-normalised embedding,
frames of the same video far apart in time and frames of other videos are pushed away:
the embedding must encode what changes over time (pose, contact, state of the scene)
and ignore what stays (viewpoint, background). The loss is the triplet loss with
semi-hard negatives (FaceNet, arXiv:1503.03832) or the multi-class N-pair loss, both
mined within each process's batch, as the TCN code mines within each replica's.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl.losses import npairs, triplet_semihard
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, mlp
from mmssl.registry import OBJECTIVES

LOSSES = ("triplet", "npairs")


def tcn_negatives(times: torch.Tensor, neg_margin_frames: int) -> torch.Tensor:
    """Which positives are negatives of which anchors.

    Anchor (b, n) and positive (b', n') form a negative pair when they come from different
    videos (b' != b), or from the same video at least ``neg_margin_frames`` apart in time.
    Frames of another video are negatives whatever their time: nothing in the batch says two
    videos are synchronised.

    Args:
        times: long (B, N), the frame index of each anchor. Its positive counts as taken at the
            same time: a single-view positive's offset within its window is below the margin.
        neg_margin_frames: the smallest time gap of a same-video negative (>= 1).
    Returns: bool (B * N, B * N), rows anchors and columns positives, both ordered (b, n).
    """
    B, N = times.shape
    video = torch.arange(B, device=times.device).repeat_interleave(N)  # (B * N,)
    t = times.reshape(-1)
    return (video[:, None] != video[None]) | ((t[:, None] - t[None]).abs() >= neg_margin_frames)


@dataclasses.dataclass(frozen=True)
class TCNSettings:
    """TCN's settings, defaults from the paper (arXiv:1704.06888): 32-d L2-normalised embeddings and
    the triplet loss with margin 0.2. The smallest gap of a same-video negative (8 frames) and the
    head's hidden width are ours."""

    embed_dim: int = 32
    hidden: int = 256
    margin: float = 0.2
    loss: str = "triplet"
    neg_margin_frames: int = 8
    l2_reg: float = 0.0


@OBJECTIVES.register("tcn")
class TCN(Objective):
    Settings: ClassVar[type] = TCNSettings
    extra_metrics = ("pos_dist", "neg_dist")  # mean squared distances of positive and negative pairs

    def __init__(self, encoder: nn.Module, *, embed_dim: int = TCNSettings.embed_dim, hidden: int = TCNSettings.hidden,
                 margin: float = TCNSettings.margin, loss: str = TCNSettings.loss,
                 neg_margin_frames: int = TCNSettings.neg_margin_frames, l2_reg: float = TCNSettings.l2_reg):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            embed_dim, hidden: widths of the 2-layer head's output (the paper's 32) and hidden layer.
            margin: triplet margin alpha on squared distances of unit vectors (TCN's 0.2).
            loss: "triplet" (semi-hard mining) or "npairs".
            neg_margin_frames: same-video frames at least this many frames apart are negatives.
            l2_reg: embedding regulariser of the n-pairs loss (its embeddings are not normalised
                by the loss, but the head's are, so the default 0 is the usual choice here).
        """
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
        if margin <= 0 or neg_margin_frames < 1:
            raise ValueError(f"need margin > 0 and neg_margin_frames >= 1, got {margin} and {neg_margin_frames}")
        self.encoder = encoder
        self.head = mlp(encoder.embed_dim, hidden, embed_dim, layers=2)
        self.margin, self.loss, self.neg_margin_frames, self.l2_reg = margin, loss, neg_margin_frames, l2_reg

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (B, C, H, W) -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.head(self.encoder.pool(self.encoder.forward_features(x))), dim=-1)

    def forward(self, batch: dict) -> dict:
        """batch: "anchor", "positive" float (B, N, C, H, W); "times" long (B, N).

        Returns: loss, std (of the anchors), pos_dist (mean d_ap) and neg_dist (mean
        squared distance of the valid anchor-negative pairs), distances squared Euclidean.
        """
        anchor, positive, times = batch["anchor"], batch["positive"], batch["times"]
        if anchor.shape != positive.shape or anchor.dim() < 3 or times.shape != anchor.shape[:2]:
            raise ValueError(f"tcn expects anchor and positive (B, N, ...) of one shape and times (B, N), got "
                             f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(times.shape)}")
        frames = torch.cat([rearrange(anchor, "b n ... -> (b n) ..."), rearrange(positive, "b n ... -> (b n) ...")])
        a, p = self.embed(frames).chunk(2)  # (B * N, E) each, ordered (b, n); one forward, shared BatchNorm stats
        valid = tcn_negatives(times, self.neg_margin_frames)  # (B * N, B * N)
        if self.loss == "triplet":
            loss = triplet_semihard(a, p, p, valid, self.margin)
        else:
            loss = npairs(a, p, valid, self.l2_reg)
        with torch.no_grad():
            d = torch.cdist(a.float(), p.float()).pow(2)  # (B * N, B * N), the diagonal is d_ap
            neg_dist = (d * valid).sum() / valid.sum().clamp_min(1)
        return {"loss": loss, "std": embedding_std(a), "pos_dist": d.diagonal().mean(),
                "neg_dist": neg_dist}

