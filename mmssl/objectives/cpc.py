"""Contrastive Predictive Coding (van den Oord et al., arXiv:1807.03748).

An encoder maps the signal to frames z_t, an autoregressive context network
summarises z_<=t into c_t, and a separate linear predictor W_k per step
k = 1..K scores W_k c_t against z_{t+k} (the positive) and against negatives
drawn from all frames of all sequences on all processes (InfoNCE).

The objective is the same whatever the sequence: ``CPC.score`` takes latents z (B, T, D) and
contexts c (B, T, D'), and ``CPC`` reads them off an audio encoder's frames and autoregressive
context, ``CPCImage`` (``cpc_image.py``) off the columns of a grid of image patches (CPC v2,
arXiv:1905.09272) with a masked convolutional context over the rows, ``CPCVideo`` (``cpc_video.py``)
off every cell of a clip's frame feature maps over time (dense predictive coding, arXiv:1909.04656),
or off its pooled frame features.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.losses import cpc_info_nce
from mmssl.objectives.base import Objective
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class CPCSettings:
    """CPC's settings, defaults from the paper (arXiv:1807.03748): K = 12 future steps predicted with one
    linear map each, scored against the positive and 128 negatives per position drawn from the frames
    of the whole batch, by the plain dot product (``temperature`` None)."""

    steps: int = 12
    num_negatives: int = 128
    negatives_from: str = "batch"
    temperature: float | None = None


@OBJECTIVES.register("cpc")
class CPC(Objective):
    Settings: ClassVar[type] = CPCSettings
    # Which contexts each step k scores. False: the first T - K, the same for every step, as the
    # CPC_audio reference crops its windows. True: every c_t whose target z_{t+k} lies inside the
    # sequence (T - k of them), as CPC v1/v2 on images score every row above the target row; on a
    # column of 7 patches 5 rows ahead, the first form would score 2 rows, this one 6.
    every_context: ClassVar[bool] = False

    def __init__(self, encoder: nn.Module, *, steps: int = CPCSettings.steps,
                 num_negatives: int = CPCSettings.num_negatives, negatives_from: str = CPCSettings.negatives_from,
                 temperature: float | None = CPCSettings.temperature):
        """
        Args:
            encoder: a sequence encoder (``forward_frames`` -> z, ``forward_context`` -> c).
            steps: K, the number of future frames predicted.
            num_negatives: M negatives per position, shared by the K steps.
            negatives_from: "batch" (any frame of any sequence on any process),
                "sequence" (frames of the same sequence only) or "others" (frames of the
                other sequences only: the paper's "mixed speaker, excluding current sequence").
            temperature: None scores with the dot product, as the paper; a number scores
                with cosine similarity divided by it (as wav2vec 2.0), which escapes the
                initial plateau much sooner on short runs.
        """
        super().__init__()
        if negatives_from not in ("batch", "sequence", "others"):
            raise ValueError(f"negatives_from must be 'batch', 'sequence' or 'others', not {negatives_from!r}")
        if steps < 1 or num_negatives < 1:
            raise ValueError("steps and num_negatives must be positive")
        self.encoder = encoder
        self.steps, self.num_negatives, self.negatives_from = steps, num_negatives, negatives_from
        self.temperature = temperature
        z_dim, c_dim = self.latent_dims()
        # One (c_dim -> z_dim) map per step, held as a single tensor so all steps run in one einsum.
        self.predictors = nn.Parameter(torch.randn(steps, c_dim, z_dim) / c_dim**0.5)

    def latent_dims(self) -> tuple[int, int]:
        """(D of z, D of c): a sequence encoder's frames and context."""
        return self.encoder.frames.embed_dim, self.encoder.embed_dim

    def sample_negatives(self, batch: int, length: int, usable: int, device: torch.device) -> torch.Tensor:
        """Negative indices (batch * usable, M) into the pool of this process.

        They are drawn for the global batch from the (process-synchronised) RNG
        and this process keeps its rows, so any number of processes draws
        exactly what one process would draw for the same global batch.
        """
        world, rank = dist.world_size(), dist.rank()
        rows = world * batch * usable
        if self.negatives_from == "batch":
            idx = torch.randint(world * batch * length, (rows, self.num_negatives), device=device)
        else:
            start = torch.arange(world * batch, device=device).repeat_interleave(usable)[:, None] * length
            if self.negatives_from == "sequence":
                idx = start + torch.randint(length, (rows, self.num_negatives), device=device)
            else:  # others: draw from all but one sequence, then step over the row's own
                if world * batch < 2:
                    raise ValueError("negatives_from='others' needs at least two sequences in the global batch")
                idx = torch.randint((world * batch - 1) * length, (rows, self.num_negatives), device=device)
                idx = idx + (idx >= start) * length
        return idx[rank * batch * usable : (rank + 1) * batch * usable]

    def forward(self, batch: dict) -> dict:
        x = batch["input"]
        z = self.encoder.forward_frames(x)  # (B, T, Dz)
        c = self.encoder.forward_context(z)  # (B, T, Dc)
        return self.score(z, c)

    def score(self, z: torch.Tensor, c: torch.Tensor, neg_index: torch.Tensor | None = None) -> dict:
        """InfoNCE of W_k c_t against z_{t+k}, whatever the sequences are: audio frames, a column of
        image patches read top to bottom, video frames.

        Args:
            z: (B, T, Dz) latents, B sequences of T steps; every z of every process is a candidate negative.
            c: (B, T, Dc) contexts, c_t read z_<=t only.
            neg_index: (B * C, M) indices of each position's negatives into the pool, the global
                batch's z (all processes' sequences in rank order, each T long), C the contexts scored
                per sequence (T - K, or T - 1 with ``every_context``); None draws them by ``negatives_from``.
        Returns: {"loss", "acc" (the positive ranked first, all steps), "acc_stepK" for three of the steps}.
        """
        B, T, Dz = z.shape
        usable = T - self.steps
        if usable < 1:
            raise ValueError(f"a crop of {T} frames is too short to predict {self.steps} steps ahead")
        contexts = T - 1 if self.every_context else usable
        pool = dist.all_gather(z.reshape(B * T, Dz))  # (world * B * T, Dz), gradients kept
        offset = dist.rank() * B * T
        pred = torch.einsum("btc,kcd->kbtd", c[:, :contexts], self.predictors.to(c.dtype))  # (K, B, C, Dz)
        t = torch.arange(contexts, device=z.device)
        k = torch.arange(1, self.steps + 1, device=z.device)
        b = torch.arange(B, device=z.device)
        target = t[None, None, :] + k[:, None, None]  # (K, 1, C): t + k, past the end for late contexts
        pos_index = offset + b[None, :, None] * T + target.clamp(max=T - 1)  # (K, B, C)
        valid = (target < T).expand(-1, B, -1).flatten(1) if self.every_context else None
        if neg_index is None:
            neg_index = self.sample_negatives(B, T, contexts, z.device)
        pred = pred.flatten(1, 2)
        if self.temperature is not None:
            pred = F.normalize(pred, dim=-1) / self.temperature
            pool = F.normalize(pool, dim=-1)
        loss_k, acc_k = cpc_info_nce(pred, pool, pos_index.flatten(1), neg_index, valid)
        out = {"loss": loss_k.mean(), "acc": acc_k.mean().detach()}
        for i in (0, self.steps // 2, self.steps - 1):
            out[f"acc_step{i + 1}"] = acc_k[i].detach()
        return out
