"""Optimizers the trainer builds by name: AdamW (the default), SGD with momentum, and LARS.

LARS (You et al., arXiv:1708.03888) is the optimizer of the SimCLR, BYOL and SwAV recipes: SGD
with momentum whose step for each weight tensor is rescaled by a trust ratio
``eta * ||w|| / (||g|| + wd * ||w||)``, so every layer moves by about the same fraction of its
norm whatever its gradient scale. Biases and normalisation parameters (the 1-D tensors) are left
out of the rescaling and of weight decay, as the SimCLR and BYOL implementations do.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
from torch import nn

from mmssl.config import ConfigError

OPTIMIZERS = ("adamw", "sgd", "lars")


def cosine(start: float, end: float, progress: float) -> float:
    """Half a cosine from ``start`` at progress 0 to ``end`` at progress 1 (clamped to [0, 1]): the
    decay of the learning-rate schedules and the rise of the momentum encoders' coefficient."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, steps: int, peak: float, warmup: int, end: float = 0.0) -> float:
    """A learning rate: linear warm-up to ``peak`` over ``warmup`` steps (step counts from 0), then
    half a cosine down to ``end`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(peak, end, (step - warmup) / max(1, steps - warmup))


def _stack(norms: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor norms as one vector, in the widest of their dtypes (fp32 weights beside bf16 ones)."""
    dtype = functools.reduce(torch.promote_types, (n.dtype for n in norms))
    return torch.stack([n.to(dtype) for n in norms])


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio.

    For a weight ``w`` (more than one dimension, or every tensor with ``exclude_1d=False``)
    with gradient ``g``::

        ratio = eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)
        ratio = min(ratio / lr, 1)                                    (with clip=True)
        ratio = 1                                                     (where ||w|| or ||g|| is 0)
        d = ratio * (g + weight_decay * w)

    and for a 1-D tensor ``d = g``. Then ``buf = momentum * buf + d`` and ``w -= lr * buf``.
    ``clip`` keeps a layer's rate at or below the global rate (solo-learn's ``clip_lr``), which
    tames the first steps of warm-up. Everything stays on the device: no host reads.

    Like a fused torch optimizer, a step skips itself (weights and momentum untouched) when a
    ``found_inf`` tensor attribute is set and non-zero; the trainer sets it for non-finite steps.
    """

    accepts_found_inf = True

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, clip: bool = True, exclude_1d: bool = True, eps: float = 1e-8):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: bad lr {lr}, momentum {momentum}, weight_decay {weight_decay} or eta {eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "clip": clip,
                    "exclude_1d": exclude_1d, "eps": eps}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        ok = None if found_inf is None else found_inf == 0  # a flagged step leaves weights and momentum alone
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            # Multi-tensor (foreach) ops over the group's tensors instead of a Python loop per tensor.
            steps = [p.grad for p in params]
            scaled = [i for i, p in enumerate(params) if p.ndim > 1 or not group["exclude_1d"]]
            if scaled:
                weights = [params[i] for i in scaled]
                grads = [steps[i] for i in scaled]
                w_norm, g_norm = _stack(torch._foreach_norm(weights)), _stack(torch._foreach_norm(grads))
                ratio = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                if group["clip"] and lr > 0:
                    ratio = torch.clamp(ratio / lr, max=1.0)
                ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                if wd:
                    grads = torch._foreach_add(grads, weights, alpha=wd)
                for i, d in zip(scaled, torch._foreach_mul(grads, list(ratio.unbind()))):
                    steps[i] = d
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            if ok is None:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, steps)
                torch._foreach_add_(params, bufs, alpha=-lr)
            else:  # the step's factors stay on the device: no host read of the flag
                keep_mom, step_lr = torch.where(ok, momentum, 1.0), torch.where(ok, lr, 0.0)
                steps = [torch.where(ok, d, torch.zeros_like(d)) for d in steps]  # also clears a NaN gradient
                torch._foreach_mul_(bufs, keep_mom)
                torch._foreach_add_(bufs, steps)
                torch._foreach_sub_(params, torch._foreach_mul(bufs, step_lr))
        return loss


def check_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not '{name}'")


def make_optimizer(params: list[nn.Parameter], device: torch.device, lr: float, weight_decay: float,
                   name: str = "adamw", momentum: float = 0.9, lars_eta: float = 0.02,
                   lars_clip: bool = True, adam_beta2: float = 0.999) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params``.

    AdamW and SGD use torch's fused kernels where they exist (CUDA and CPU tensors), so all
    parameters update in one pass and a flagged step is skipped inside the kernel.
    """
    check_name(name)
    fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params) or None
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, adam_beta2), weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta, clip=lars_clip)
