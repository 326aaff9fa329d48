"""DINO, self-distillation with no labels (Caron et al., arXiv:2104.14294).

A student (encoder -> head) predicts, for every crop, the output distribution a teacher gives for
the other global crops. The teacher is an exponential moving average of the student (encoder and
head) and sees only the global crops; its outputs are centred (minus ``center``, a moving average
of their batch mean over all processes) and sharpened (a low temperature), which keeps the two
from collapsing. The teacher and the centre change only in ``after_step``. Multi-crop:
``batch["views"] = [g0, .., g_{G-1}, l0, ...]``, global crops first.

``centering="sinkhorn"`` replaces the centre by DINOv2's Sinkhorn-Knopp centring (arXiv:2304.07193,
Sec. 4, from SwAV): the sharpened teacher outputs of the batch's global crops, on all processes, are
scaled so that every output gets the same share of the batch. The moving-average centre only keeps a
single output from taking every crop; a batch can still settle on a few outputs, each taking a large
share (what the demo's runs showed on the shapes: docs/results/image.md, "DINO's targets").
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl import dist
from mmssl.losses import sinkhorn
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import ema_update, embedding_std, encode_views, target_monitors, views_of
from mmssl.optim import cosine
from mmssl.registry import OBJECTIVES


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """H(P_t, P_s) over every (teacher crop i, student crop v) pair with i != v, averaged over the pairs
    and the batch (Algorithm 1 of arXiv:2104.14294, with multi-crop as in its Sec. 3.1).

    Args:
        student: one (B, K) tensor of logits per crop, global crops first.
        teacher: one (B, K) tensor of logits per global crop (no gradient needed).
        center: (K,) subtracted from the teacher's logits before its softmax.
    Returns: the scalar loss.
    """
    return dino_cross_entropy(student, [dino_targets(t, center, teacher_temp) for t in teacher], student_temp)


def dino_targets(teacher: torch.Tensor, center: torch.Tensor, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """Teacher logits (..., K) -> the centred, sharpened targets P_t, detached, in fp32."""
    return F.softmax((teacher.detach().float() - center) / teacher_temp, dim=-1)


def dino_cross_entropy(student: list[torch.Tensor], targets: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """``dino_loss`` from the teacher's targets (``dino_targets``, one (B, K) per global crop) instead of
    its logits."""
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [-(q * log_probs[v]).sum(-1).mean() for i, q in enumerate(targets)
             for v in range(len(log_probs)) if v != i]
    if not terms:
        raise ValueError("dino_loss needs two crops or more")
    return torch.stack(terms).mean()


class DINOHead(nn.Module):
    """MLP (``nlayers`` Linear layers, GELU between, optional BatchNorm) to a ``bottleneck_dim`` code,
    L2-normalised, then a weight-normalised Linear to ``out_dim`` logits: w_k = g_k v_k / ||v_k||.
    With ``norm_last_layer`` g is fixed at 1, so every w_k has unit norm."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int,
                 use_bn: bool, norm_last_layer: bool):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers += [nn.BatchNorm1d(b), nn.GELU()] if use_bn else [nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):  # the reference code's initialisation
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_v = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach())  # (K, bottleneck)
        self.last_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)  # (K, 1)

    def forward(self, h: torch.Tensor, last_v: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, in_dim) -> logits (B, out_dim); ``last_v`` stands in for the last layer's direction
        (a detached copy while it is frozen)."""
        v = self.last_v if last_v is None else last_v
        return F.normalize(self.mlp(h), dim=-1) @ (self.last_g * F.normalize(v, dim=1)).t()


@dataclasses.dataclass(frozen=True)
class DINOSettings:
    """DINO's settings, defaults from the paper's reference code (github.com/facebookresearch/dino,
    main_dino.py): a 3-layer 2048-wide head with a 256-d bottleneck and K = 65536 outputs, a
    weight-normalised last layer of unit norm (``norm_last_layer``), no BatchNorm in the head,
    tau_s = 0.1, tau_t = 0.04 (the paper's implementation details warm tau_t up from 0.04 to 0.07
    over 30 epochs: ``teacher_temp=0.07`` with ``warmup_teacher_temp_steps``), centre momentum m = 0.9 and a teacher
    momentum rising from 0.996 to 1 on a cosine. ``centering``: "ema" (the paper's moving-average centre)
    or "sinkhorn" (DINOv2's Sinkhorn-Knopp, ``sinkhorn_iters`` rounds; its reference code runs 3). The
    paper counts the temperature warm-up and the frozen last layer (1 epoch) in epochs; an epoch's length
    in steps depends on the data, so here both are counted in optimizer steps and a recipe sets them (0: none)."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    freeze_last_layer_steps: int = 0
    centering: str = "ema"
    sinkhorn_iters: int = 3


_S = DINOSettings  # the constructor's defaults are the settings' own


@OBJECTIVES.register("dino")
class DINO(Objective):
    Settings: ClassVar[type] = DINOSettings
    extra_metrics: ClassVar[tuple[str, ...]] = ("target_entropy", "target_usage")  # see target_monitors

    def __init__(self, encoder: nn.Module, *, out_dim: int = _S.out_dim, hidden_dim: int = _S.hidden_dim,
                 bottleneck_dim: int = _S.bottleneck_dim, nlayers: int = _S.nlayers,
                 use_bn_in_head: bool = _S.use_bn_in_head, norm_last_layer: bool = _S.norm_last_layer,
                 student_temp: float = _S.student_temp, teacher_temp: float = _S.teacher_temp,
                 warmup_teacher_temp: float = _S.warmup_teacher_temp,
                 warmup_teacher_temp_steps: int = _S.warmup_teacher_temp_steps,
                 center_momentum: float = _S.center_momentum, momentum_teacher: float = _S.momentum_teacher,
                 freeze_last_layer_steps: int = _S.freeze_last_layer_steps, centering: str = _S.centering,
                 sinkhorn_iters: int = _S.sinkhorn_iters, global_crops: int = 2):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn_in_head, norm_last_layer: the head.
            student_temp, teacher_temp: tau_s and tau_t (after the warm-up).
            warmup_teacher_temp, warmup_teacher_temp_steps: tau_t rises linearly from the first to
                ``teacher_temp`` over this many optimizer steps.
            center_momentum: m in c <- m c + (1 - m) mean(teacher logits).
            momentum_teacher: lambda at step 0 of teacher <- lambda teacher + (1 - lambda) student,
                rising to 1 on a cosine over the run.
            freeze_last_layer_steps: the last layer gets a zero gradient for this many optimizer steps.
            centering: "ema" (subtract the moving-average centre, then softmax at tau_t) or "sinkhorn"
                (``sinkhorn_iters`` Sinkhorn-Knopp rounds on the logits / tau_t of the batch's global
                crops on every process; the centre is then neither read nor moved).
            global_crops: how many leading views are global crops (the teacher's inputs).
        """
        super().__init__()
        if min(out_dim, hidden_dim, bottleneck_dim, nlayers, global_crops) < 1 or min(student_temp, teacher_temp,
                                                                                      warmup_teacher_temp) <= 0:
            raise ValueError(f"DINO needs positive widths, nlayers, global_crops and temperatures; got "
                             f"{out_dim}, {hidden_dim}, {bottleneck_dim}, {nlayers}, {global_crops}, {student_temp}, "
                             f"{teacher_temp}, {warmup_teacher_temp}")
        if not (0.0 <= center_momentum <= 1.0 and 0.0 <= momentum_teacher <= 1.0) or min(
                warmup_teacher_temp_steps, freeze_last_layer_steps) < 0:
            raise ValueError(f"DINO needs center_momentum and momentum_teacher in [0, 1] and step counts >= 0; got "
                             f"{center_momentum}, {momentum_teacher}, {warmup_teacher_temp_steps}, "
                             f"{freeze_last_layer_steps}")
        if centering not in ("ema", "sinkhorn") or sinkhorn_iters < 1:
            raise ValueError(f"DINO needs centering 'ema' or 'sinkhorn' and sinkhorn_iters >= 1; got "
                             f"'{centering}', {sinkhorn_iters}")
        self.encoder = encoder
        self.head = DINOHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn_in_head,
                             norm_last_layer)
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp, self.warmup_teacher_temp_steps = warmup_teacher_temp, warmup_teacher_temp_steps
        self.center_momentum, self.momentum_teacher = center_momentum, momentum_teacher
        self.freeze_last_layer_steps, self.global_crops = freeze_last_layer_steps, global_crops
        self.centering, self.sinkhorn_iters = centering, sinkhorn_iters
        self.register_buffer("center", torch.zeros(out_dim))
        # Optimizer steps taken; a buffer, so a resumed run keeps its schedules, read on the device.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # (sum of teacher logits, row count) of each training micro-batch since the last optimizer step.
        self._pending: list[tuple[torch.Tensor, int]] = []

    def teacher_temp_now(self) -> torch.Tensor:
        """tau_t at ``steps_done``: linear from warmup_teacher_temp to teacher_temp, then constant (a 0-d tensor)."""
        progress = (self.steps_done.float() / max(self.warmup_teacher_temp_steps, 1)).clamp(max=1.0)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * progress

    def teacher_targets(self, logits: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (B, K) -> its targets at ``steps_done``, by ``centering``: centred and
        sharpened, or Sinkhorn-Knopp on logits / tau_t (tau_t stays a tensor on the device: no sync)."""
        if self.centering == "sinkhorn":
            return sinkhorn(logits.detach().float() / self.teacher_temp_now(), 1.0, self.sinkhorn_iters)
        return dino_targets(logits, self.center, self.teacher_temp_now())

    def forward(self, batch: dict) -> dict:
        """batch["views"] = [g0, .., g_{G-1}, l0, ...], each (B, ...). Returns loss and std."""
        views = views_of(batch, "dino", count=None)
        if len(views) < self.global_crops:
            raise ValueError(f"dino expects at least {self.global_crops} views (its global crops), got {len(views)}")
        last_v = self.head.last_v
        if self.freeze_last_layer_steps:
            # Decided on the device; a zero gradient rather than none keeps the parameter in DDP's graph.
            last_v = torch.where(self.steps_done < self.freeze_last_layer_steps, last_v.detach(), last_v)
        student = list(self.head(torch.cat(encode_views(self.encoder, views)), last_v).chunk(len(views)))
        with torch.no_grad():
            t = self.teacher_head(torch.cat(encode_views(self.teacher_encoder, views[: self.global_crops])))
        targets = self.teacher_targets(t)  # once, for the loss and the monitors
        loss = dino_cross_entropy(student, list(targets.chunk(self.global_crops)), self.student_temp)
        if self.training and self.centering == "ema":
            self._pending.append((t.float().sum(0), len(t)))
        return {"loss": loss, "std": embedding_std(student[0]), **target_monitors(targets)}

    def momentum_at(self, step: int, max_steps: int) -> float:
        """lambda_k = 1 - (1 - lambda_0) (cos(pi k / K) + 1) / 2: lambda_0 at k = 0, rising to 1 at k = K."""
        return cosine(self.momentum_teacher, 1.0, step / max(max_steps, 1))

    @torch.no_grad()
    def after_step(self, step: int, max_steps: int) -> None:
        """Once per optimizer step: the teacher follows the student; the centre moves towards the mean
        teacher logits of this step's micro-batches on every process; count the step."""
        ema_update([(self.teacher_encoder, self.encoder), (self.teacher_head, self.head)],
                   self.momentum_at(step, max_steps))
        if self._pending:
            total = dist.all_reduce_sum(torch.stack([s for s, _ in self._pending]).sum(0))
            rows = sum(n for _, n in self._pending) * dist.world_size()  # every process holds as many rows
            self._pending.clear()
            self.center.lerp_(total / rows, 1.0 - self.center_momentum)
        self.steps_done.fill_(step)
