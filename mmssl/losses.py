"""Pure loss functions. Each is tested against a loop-based reference written
from its paper's pseudocode (tests/test_losses.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax in fp32 under bf16/fp16 autocast; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def info_nce(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE (arXiv:1807.03748): -log softmax of the positive among positive + negatives.

    Args:
        query: (N, D); key: (N, D), the positive of each query.
        negatives: (N, M, D) per query, or (M, D) shared by all queries.
        temperature: logits are dot products divided by it.
    Returns: the mean loss over the N queries (scalar).
    """
    pos = (query * key).sum(-1, keepdim=True)  # (N, 1)
    if negatives.dim() == 2:
        neg = query @ negatives.t()  # (N, M)
    else:
        neg = torch.einsum("nd,nmd->nm", query, negatives)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(_at_least_fp32(logits), torch.zeros(len(query), dtype=torch.long, device=query.device))


def cpc_info_nce(
    pred: torch.Tensor, pool: torch.Tensor, pos_index: torch.Tensor, neg_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPC's InfoNCE for K prediction steps at once, negatives shared across steps.

    Args:
        pred: (K, N, D) predictions W_k c_t for N positions.
        pool: (P, D) the frames z that positives and negatives index into
            (all frames of all sequences on all processes).
        pos_index: (K, N) index in ``pool`` of z_{t+k}, the positive.
        neg_index: (N, M) indices in ``pool`` of the M negatives of each position.
            A negative that is the positive itself is masked out.
    Returns: (loss per step (K,), accuracy of the positive per step (K,)).
    """
    pos = torch.einsum("knd,knd->kn", pred, pool[pos_index])[..., None]  # (K, N, 1)
    neg = torch.einsum("knd,nmd->knm", pred, pool[neg_index])  # (K, N, M)
    neg = neg.masked_fill(neg_index[None] == pos_index[..., None], float("-inf"))
    logits = _at_least_fp32(torch.cat([pos, neg], dim=-1))  # (K, N, 1 + M); the positive is class 0
    loss = -logits.log_softmax(dim=-1)[..., 0].mean(dim=1)
    acc = (logits.argmax(dim=-1) == 0).float().mean(dim=1)
    return loss, acc
