"""What the end-of-run evaluation can say about an encoder without labels: whether its pooled
features collapsed (the std of L2-normalised embeddings, arXiv:2011.10566 Sec. 4.1) and over how
many directions they spread (RankMe, arXiv:2210.02885), beside a randomly initialised encoder of
the same architecture, and which probes it skipped."""
from __future__ import annotations

from typing import Any

import torch

from mmssl.objectives.heads import embedding_std


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., arXiv:2210.02885, eq. 1): the effective rank of features z (N, D),
    exp(-sum_k p_k log p_k) with p_k = sigma_k / ||sigma||_1 + eps over z's singular values.

    Between 1 (every feature on one line) and min(N, D). A low figure is dimensional collapse: the
    features vary along a few directions only, so whatever the probes need beyond those is lost.
    The features are taken as they are (no centring), as the paper does.
    """
    if z.dim() != 2 or min(z.shape) < 1:
        raise ValueError(f"rankme expects an (N, D) matrix with N, D >= 1, got {tuple(z.shape)}")
    sigma = torch.linalg.svdvals(z.double())
    if not sigma.sum() > 0:
        raise ValueError("rankme of an all-zero (or non-finite) matrix is undefined")
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_report(pooled: dict[str, torch.Tensor], unit: str, hint: str) -> dict[str, Any]:
    """pooled: {name: (N, D) pooled features}. Returns {"collapse": {name: std}, "rankme": {name: rank},
    "skipped": hint, "table"}.

    The std is near 1/sqrt(D) for features spread over the sphere and near 0 for a collapsed encoder;
    RankMe (``rankme``) near 1 when the features lie along one direction.
    """
    stds = {name: float(embedding_std(z)) for name, z in pooled.items()}
    ranks = {name: rankme(z) for name, z in pooled.items()}
    n, d = next(iter(pooled.values())).shape
    title = (f"collapse monitor over {n} {unit}: std of L2-normalised pooled features "
             f"(1/sqrt(D) = {d ** -0.5:.3f} when spread out, 0 when collapsed) and RankMe "
             f"(effective rank, 1 to min(N, D) = {min(n, d)})")
    lines = [title, f"{'':<16}{'std':>8}{'RankMe':>9}"]
    lines += [f"{name:<16}{stds[name]:>8.3f}{ranks[name]:>9.1f}" for name in pooled]
    lines.append(hint)
    return {"collapse": stds, "rankme": ranks, "skipped": hint, "table": "\n".join(lines)}
