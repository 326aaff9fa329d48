"""Exemplar CNN (Dosovitskiy et al., arXiv:1406.6909) and its non-parametric memory-bank form,
instance discrimination (Wu et al., arXiv:1805.01978).

Every training image is its own class, seen each step under a fresh heavy augmentation; the
network must name which image a crop came from. Two ways to hold the N classes:

- ``memory="parametric"`` (the Exemplar CNN): a linear classifier with one output per training
  image on the pooled features, softmax cross-entropy against the image's index. Its N x D weights
  and N-way softmax make it practical for small N only (the paper: 8000-32000 surrogate classes).
- ``memory="bank"`` (Wu et al.): a linear projection to ``dim`` and L2 normalisation give v; a
  memory bank holds one unit vector per image. The loss is the full softmax cross-entropy over
  the positive (the bank's entry of the image itself) and ``num_negatives`` entries drawn
  uniformly, with replacement, from the whole bank (so one may be the image itself, as in the
  paper's sampler), shared by the batch, at temperature tau -- the NCE-free form of the paper's
  non-parametric softmax over a sampled set. With ``num_negatives=0`` the softmax runs over every
  entry instead, the image's own entry its target: the exact non-parametric softmax, which the paper
  computes where N allows (CIFAR-10's 50,000 images). The paper's NCE approximation is not used.

The bank changes only in ``after_step``: each image's entry becomes the momentum average of
itself and the features of its step (v_i <- normalize(m v_i + (1 - m) f_i), m = 0.5), with the
indices and features of every process and micro-batch gathered, so all processes hold the same
bank. The negatives' indices are drawn on process 0 from the global generator and broadcast, so
every process compares against the same set. The bank is a buffer: checkpoints carry it.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.losses import info_nce
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.registry import OBJECTIVES

MEMORIES = ("parametric", "bank")


@dataclasses.dataclass(frozen=True)
class ExemplarSettings:
    """Instance discrimination's settings, the memory bank's defaults from Wu et al. (arXiv:1805.01978):
    128-d unit features, 4096 negatives, temperature 0.07, bank momentum 0.5. ``dim``, ``num_negatives``,
    ``temperature`` and ``bank_momentum`` apply to the bank only."""

    memory: str = "bank"  # "bank" (scales to any N) | "parametric" (the Exemplar CNN's N-way classifier)
    dim: int = 128
    num_negatives: int = 4096  # 0: none drawn, the exact softmax over the whole bank
    temperature: float = 0.07
    bank_momentum: float = 0.5


def name_image(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) logits over the N images, each row's own image ``index`` (B,) -> (mean cross-entropy,
    the share of rows whose highest logit is their own image)."""
    return F.cross_entropy(logits, index), (logits.detach().argmax(dim=1) == index).float().mean()


@OBJECTIVES.register("exemplar")
class Exemplar(Objective):
    Settings: ClassVar[type] = ExemplarSettings
    # every process writes the same gathered features at the same indices
    unsynced_buffers: ClassVar[tuple[str, ...]] = ("bank",)
    single_view = True  # one augmented crop of each image per step

    def __init__(self, encoder: nn.Module, *, num_images: int, memory: str = ExemplarSettings.memory,
                 dim: int = ExemplarSettings.dim, num_negatives: int = ExemplarSettings.num_negatives,
                 temperature: float = ExemplarSettings.temperature,
                 bank_momentum: float = ExemplarSettings.bank_momentum):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            num_images: N, the number of training images (classes); not a setting: the task passes
                its training set's size. Batches carry each crop's image index in [0, N).
            memory: "bank" or "parametric" (see the module docstring).
            dim: width of the projected, L2-normalised features the bank stores.
            num_negatives: bank entries drawn per step as negatives; 0: none drawn, the softmax runs
                over every entry of the bank, exactly (the paper's choice where N is small: CIFAR).
            temperature: tau, the softmax's temperature on cosine logits.
            bank_momentum: m in v_i <- normalize(m v_i + (1 - m) f_i).
        """
        super().__init__()
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {', '.join(MEMORIES)}, not {memory!r}")
        if num_negatives < 0 or dim < 1 or temperature <= 0 or not 0.0 <= bank_momentum < 1.0:
            raise ValueError(f"exemplar needs num_negatives >= 0, dim >= 1, temperature > 0 and bank_momentum in "
                             f"[0, 1); got {num_negatives}, {dim}, {temperature}, {bank_momentum}")
        if num_images < 1:
            raise ValueError(f"exemplar needs the number of training images, got {num_images}")
        self.encoder, self.memory, self.num_images = encoder, memory, num_images
        self.num_negatives, self.temperature, self.bank_momentum = num_negatives, temperature, bank_momentum
        self.whole_bank = memory == "bank" and num_negatives == 0
        if memory == "parametric":
            self.classifier = nn.Linear(encoder.embed_dim, num_images)
        else:
            self.projector = nn.Linear(encoder.embed_dim, dim)  # the paper's linear 128-d head
            # Random unit vectors; DDP copies process 0's buffers to the others when it wraps the model.
            self.register_buffer("bank", F.normalize(torch.randn(num_images, dim), dim=1))  # (N, dim)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # gathered (indices, features) since the last step

    def _check(self, index: torch.Tensor) -> None:
        # Asynchronous on a GPU (a device-side assert), raising this message at once on a CPU: no host sync per step.
        torch._assert_async(((index >= 0) & (index < self.num_images)).all(),
                            f"exemplar: an image index is outside [0, {self.num_images}): the task must pass the "
                            f"training set's size as num_images")

    def forward(self, batch: dict) -> dict:
        """batch["input"] = (B, C, H, W) crops, batch["index"] = (B,) their images' indices in [0, N).
        Returns loss, acc (the image named / the positive above every negative) and std."""
        x, index = batch["input"], batch["index"]
        self._check(index)
        h = self.encoder.pool(self.encoder.forward_features(x))  # (B, D)
        if self.memory == "parametric":
            loss, acc = name_image(self.classifier(h).float(), index)  # (B, N) logits
            return {"loss": loss, "acc": acc, "std": embedding_std(h)}
        v = F.normalize(self.projector(h).float(), dim=1)  # (B, dim)
        if self.whole_bank:
            # The exact non-parametric softmax over all N entries (the paper's CIFAR setting): a class
            # per image, the image's own entry its target. The bank changes only in after_step, after
            # every micro-batch's backward has read it.
            loss, acc = name_image(v @ self.bank.t() / self.temperature, index)  # (B, N) logits
        else:
            negatives = self.bank[self.draw_negatives(x.device)]  # (K, dim), a copy: after_step may write the bank
            positives = self.bank[index]  # (B, dim)
            loss = info_nce(v, positives, negatives, self.temperature)
            with torch.no_grad():
                pos = (v * positives).sum(dim=1)
                acc = (pos > (v @ negatives.t()).max(dim=1).values).float().mean()
        if self.training:
            self._pending.append((dist.all_gather_nograd(index), dist.all_gather_nograd(v.detach())))
        return {"loss": loss, "acc": acc, "std": embedding_std(v)}

    def draw_negatives(self, device: torch.device) -> torch.Tensor:
        """(K,) bank indices, uniform with replacement, drawn on process 0 and shared by every process."""
        return dist.broadcast(torch.randint(self.num_images, (self.num_negatives,), device=device))

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: each micro-batch's features enter the bank at their indices, in order."""
        for index, v in self._pending:
            self.update_bank(index, v)
        self._pending.clear()

    @torch.no_grad()
    def update_bank(self, index: torch.Tensor, v: torch.Tensor) -> None:
        """v_i <- normalize(m v_i + (1 - m) f_i) for the rows ``index`` (B,) and features ``v`` (B, dim).
        The indices of one global batch are distinct (a slice of the epoch's permutation)."""
        mixed = self.bank_momentum * self.bank[index] + (1 - self.bank_momentum) * v.to(self.bank.dtype)
        self.bank[index] = F.normalize(mixed, dim=1)
