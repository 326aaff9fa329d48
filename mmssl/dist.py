"""Process-group helpers that work with or without torch.distributed initialised."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each process the gradient of its own slice.

    Process p's loss L_p depends on every process's tensor, so the gradient of
    the global loss sum_p L_p w.r.t. process q's tensor is the sum over p of
    the gradient that process p computed for q's slice: an all-reduce (sum) of
    the incoming gradient, then this process's slice. With DDP averaging the
    parameter gradients afterwards, the result equals one process computing
    the mean loss over the global batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every process along dim 0, keeping gradients.

    Every process must pass the same B. With one process this is the identity.
    ``accelerator.gather`` drops gradients; use this for contrastive negatives.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process without gradients (targets, queue keys)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _ReduceWithGrad(torch.autograd.Function):
    """all_reduce (sum) whose backward is an all_reduce (sum) of the incoming gradient.

    The sum's adjoint is itself: every process's loss L_p reads the same sum, so the gradient of
    sum_p L_p w.r.t. this process's summand is the sum over p of the gradients they received.
    With DDP averaging the parameter gradients afterwards, the result equals one process
    computing the loss on the global batch (as for ``all_gather`` above).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over processes, out of place, keeping gradients (identity with one process).

    For statistics of the global batch built from per-process sums (Barlow Twins' cross-correlation);
    ``all_reduce_sum`` below is in place and drops gradients.
    """
    if world_size() == 1:
        return x
    return _ReduceWithGrad.apply(x)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (no-op with one process); returns ``x``."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Process ``src``'s ``x`` on every process, in place (no-op with one process); returns ``x``."""
    if world_size() > 1:
        dist.broadcast(x, src)
    return x
