"""Pieces the instance-contrastive objectives share: MLP heads, a multi-view
encoder pass, the moving-average update of a target network and the collapse monitor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batch_norm: bool = True,
        last_bn: bool = False) -> nn.Sequential:
    """A projector / predictor: ``layers`` Linear layers, BatchNorm + ReLU between them.

    Args:
        in_dim, hidden_dim, out_dim: widths of the input, the hidden layers and the output.
        layers: number of Linear layers (1 is a single linear map).
        batch_norm: BatchNorm1d after each hidden Linear (whose bias it makes redundant).
        last_bn: a BatchNorm1d without affine parameters on the output, as the
            projectors of SimSiam (arXiv:2011.10566) and SimCLR v2 (arXiv:2006.10029).
    Returns: an ``nn.Sequential`` mapping (B, in_dim) -> (B, out_dim).
    """
    if layers < 1 or min(in_dim, hidden_dim, out_dim) < 1:
        raise ValueError(f"mlp needs layers >= 1 and positive widths, got layers={layers}, "
                         f"dims=({in_dim}, {hidden_dim}, {out_dim})")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            mods.append(nn.BatchNorm1d(hidden_dim))
        mods.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def views_of(batch: dict, objective: str, count: int | None = 2) -> list[torch.Tensor]:
    """``batch["views"]`` checked: a list of at least two batched tensors of one batch size.

    Args:
        objective: name used in the error message.
        count: exact number of views required, or None for "two or more".
    Returns: the views as a list.
    """
    views = batch.get("views")
    if not isinstance(views, (list, tuple)) or len(views) < 2 or not all(torch.is_tensor(v) for v in views):
        raise ValueError(f"{objective} expects batch['views'] = a list of at least two batched tensors")
    if count is not None and len(views) != count:
        raise ValueError(f"{objective} expects {count} views, got {len(views)}")
    if len({v.shape[0] for v in views}) != 1:
        raise ValueError(f"{objective}: every view needs the same batch size, got {[v.shape[0] for v in views]}")
    return list(views)


def encode_views(encoder: nn.Module, views: list[torch.Tensor], pool: bool = True) -> list[torch.Tensor]:
    """Pooled encoder features (or tokens) of each view; consecutive views of one shape share a forward.

    One forward per shape is faster than one per view and is what the SimCLR
    and SwAV reference code do; BatchNorm statistics then span the views of one
    shape.

    Args:
        views: tensors (B, ...) of any modality; views of different shapes (e.g.
            SwAV's local crops) are encoded separately.
        pool: False keeps the tokens (dense objectives read the feature map).
    Returns: one (B, D) tensor per view, in order; (B, N, D) tokens when ``pool`` is False.
    """
    out: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        h = encoder.forward_features(torch.cat(views[start:end]))  # ((end - start) * B, N, D)
        if pool:
            h = encoder.pool(h)  # ((end - start) * B, D)
        out.extend(h.chunk(end - start))
        start = end
    return out


@torch.no_grad()
def ema_update(pairs: list[tuple[nn.Module, nn.Module]], tau: float) -> None:
    """target <- tau * target + (1 - tau) * online for every parameter of each (target, online) pair,
    in one foreach pass (BYOL's target network, MoCo's key encoder)."""
    targets = [p for target, _ in pairs for p in target.parameters()]
    onlines = [p.detach() for _, online in pairs for p in online.parameters()]
    torch._foreach_lerp_(targets, onlines, 1.0 - tau)


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: std over the batch of L2-normalised embeddings, averaged over dims.

    Near 1/sqrt(D) for embeddings spread over the sphere, near 0 when they collapse
    to one point (as in arXiv:2011.10566, Sec. 4.1).

    Args:
        z: (B, D) embeddings, B >= 2.
    Returns: a detached fp32 scalar.
    """
    return F.normalize(z.detach().float(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def target_monitors(targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """How a self-distillation or clustering objective's soft targets (B, K), each row a distribution
    over K outputs, collapse (DINO, arXiv:2104.14294, Sec. 5.3; SwAV's codes alike): to a uniform
    target (``target_entropy``, the mean entropy of one crop's target, in nats, near log K: the scores
    no longer tell the outputs apart) or to one output for every crop (``target_usage``, exp of the
    entropy of the batch's mean target: about how many of the K outputs the targets spread over, near
    1). Healthy training keeps the first well below log K and the second well above 1."""
    mean = targets.mean(0)
    return {"target_entropy": target_entropy(targets), "target_usage": (-torch.special.xlogy(mean, mean).sum()).exp()}


@torch.no_grad()
def target_entropy(targets: torch.Tensor) -> torch.Tensor:
    """The mean entropy of the rows of soft targets (B, K), in nats (log K when every row is uniform)."""
    return -torch.special.xlogy(targets, targets).sum(-1).mean()
