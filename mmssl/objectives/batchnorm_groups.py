"""BatchNorm over groups of a batch in one forward pass.

Shuffle-BN (MoCo, DenseCL) normalises each group of a batch with its own statistics. Running the
encoder once per group does that, but every layer then runs on a fraction of the batch: convolutions
on small batches use the cores less well, and each group pays the per-layer overhead again. Inside
``batchnorm_groups(encoder, sizes)`` the encoder runs on the whole batch and only its BatchNorm layers
split it: each group is normalised by the native kernel with its own statistics, the running
statistics are updated group after group in the same order as the per-group passes would update them,
and the backward pass runs the native kernel's backward per group. The outputs, gradients and
running statistics are those of the per-group passes, computed in fewer, larger operations.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class _GroupedBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of x's consecutive groups of ``sizes`` rows, each with its own statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, sizes, factors, eps):
        out = torch.empty_like(x)  # keeps x's memory format (channels-last stays channels-last)
        stats = []
        for part, dst, factor in zip(x.split(sizes), out.split(sizes), factors):
            y, mean, invstd = torch.native_batch_norm(part, weight, bias, running_mean, running_var, True, factor, eps)
            dst.copy_(y)
            stats += [mean, invstd]
        ctx.save_for_backward(x, weight, *stats)
        ctx.sizes, ctx.eps = sizes, eps
        ctx.affine = (weight is not None, bias is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, *stats = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1] and ctx.affine[0], ctx.needs_input_grad[2] and ctx.affine[1]]
        grad_in = torch.empty_like(x) if mask[0] else None
        grad_weight = grad_bias = None
        dsts = grad_in.split(ctx.sizes) if mask[0] else [None] * len(ctx.sizes)
        parts = zip(x.split(ctx.sizes), grad_out.split(ctx.sizes), stats[0::2], stats[1::2], dsts)
        for part, grad, mean, invstd, dst in parts:
            gi, gw, gb = torch.ops.aten.native_batch_norm_backward(grad, part, weight, None, None, mean, invstd,
                                                                   True, ctx.eps, mask)
            if mask[0]:
                dst.copy_(gi)
            if mask[1]:
                grad_weight = gw if grad_weight is None else grad_weight + gw
            if mask[2]:
                grad_bias = gb if grad_bias is None else grad_bias + gb
        return grad_in, grad_weight, grad_bias, None, None, None, None, None


# SyncBatchNorm gathers statistics across processes: its groups are not this module's to split.
_GROUPABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _splittable(norms: list[nn.modules.batchnorm._BatchNorm]) -> bool:
    return all(isinstance(m, _GROUPABLE) for m in norms)


def groupable(module: nn.Module) -> bool:
    """Whether every BatchNorm layer of ``module`` is one that ``batchnorm_groups`` can split."""
    return _splittable(_norms(module))


def _grouped_forward(bn: nn.modules.batchnorm._BatchNorm, sizes: list[int], x: torch.Tensor) -> torch.Tensor:
    """``bn``'s forward with each group of samples normalised by its own statistics."""
    uses_batch_statistics = bn.training or bn.running_mean is None
    if not uses_batch_statistics:
        return type(bn).forward(bn, x)
    bn._check_input_dim(x)
    total = sum(sizes)
    if x.shape[0] % total:
        raise ValueError(f"a BatchNorm layer got {x.shape[0]} rows for a batch of {total} samples; grouped "
                         "BatchNorm needs each sample's rows to be a whole number of consecutive rows")
    rows = [size * (x.shape[0] // total) for size in sizes]  # an encoder that folds patches or frames into the batch
    update = bn.training and bn.track_running_stats
    factors = [0.0] * len(rows)
    if update:
        if bn.momentum is None:  # a cumulative average: each group counts as one batch
            seen = int(bn.num_batches_tracked)
            factors = [1.0 / (seen + i + 1) for i in range(len(rows))]
        else:
            factors = [bn.momentum] * len(rows)
        bn.num_batches_tracked.add_(len(rows))
    running = (bn.running_mean, bn.running_var) if update else (None, None)
    return _GroupedBatchNorm.apply(x, bn.weight, bn.bias, *running, rows, factors, bn.eps)


@contextlib.contextmanager
def batchnorm_groups(module: nn.Module, sizes: Sequence[int]) -> Iterator[None]:
    """Within the block, every BatchNorm layer of ``module`` that normalises by batch statistics
    normalises each of the batch's consecutive groups of ``sizes`` samples by that group's own,
    as if each group went through ``module`` alone, the groups in order.

    A layer that sees more rows than samples (an encoder that folds each image's patches or a clip's
    frames into the batch) takes each sample's rows as consecutive, as ``flatten(0, 1)`` lays them out.
    SyncBatchNorm layers are refused: their statistics span processes.
    """
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"group sizes must be positive, not {sizes}")
    norms = _norms(module)
    if not _splittable(norms):
        raise TypeError("grouped BatchNorm splits BatchNorm1d/2d/3d layers; this module has others (SyncBatchNorm?)")
    # An enclosing block's grouping is put back on exit (blocks nest), the class's forward otherwise.
    before = [bn.__dict__.get("forward") for bn in norms]
    for bn in norms:
        bn.forward = functools.partial(_grouped_forward, bn, sizes)
    try:
        yield
    finally:
        for bn, forward in zip(norms, before):
            if forward is None:
                del bn.forward
            else:
                bn.forward = forward
