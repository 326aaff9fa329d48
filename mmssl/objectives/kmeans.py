"""The library's one k-means: Lloyd's algorithm from k-means++ or random seeding, with the
option to re-seed empty clusters by splitting a non-empty one (DeepCluster, arXiv:1807.05520).

Colour quantisation (``objectives/colorization.py``) and DeepCluster's pseudo-labels both use
it. The distances run on the samples' device; every random draw comes from a CPU generator, so
a given generator gives the same clustering on any device (up to the distances' rounding).
"""
from __future__ import annotations

import torch

INITS = ("k-means++", "random")


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ (Arthur & Vassilvitskii, 2007): each next centre drawn with probability ~ its
    squared distance to the nearest centre chosen so far. x (N, D) -> centres (k, D)."""
    first = torch.randint(len(x), (1,), generator=generator).to(x.device)
    centers = x[first]  # (1, D)
    d2 = (x - centers).pow(2).sum(-1)  # (N,) squared distance to the nearest chosen centre
    for _ in range(1, k):
        p = d2.cpu()
        if p.sum() > 0:
            nxt = torch.multinomial(p / p.sum(), 1, generator=generator)
        else:  # fewer distinct points than k: any sample
            nxt = torch.randint(len(x), (1,), generator=generator)
        nxt = nxt.to(x.device)
        centers = torch.cat([centers, x[nxt]])
        d2 = torch.minimum(d2, (x - x[nxt]).pow(2).sum(-1))
    return centers


def nearest(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (Euclidean): x (N, D), centres (k, D) -> long (N,)."""
    return torch.cdist(x, centers).argmin(dim=1)


def means(x: torch.Tensor, ids: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Lloyd's update: each centre moves to the mean of its points; an empty one stays where it is."""
    sums = torch.zeros_like(centers).index_add_(0, ids, x)
    counts = torch.bincount(ids, minlength=len(centers))[:, None]
    return torch.where(counts > 0, sums / counts.clamp_min(1), centers)


def split_empty(x: torch.Tensor, ids: torch.Tensor, centers: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
    """Gives every empty cluster half of the points of a non-empty one; returns the new ids (N,).

    DeepCluster's remedy (arXiv:1807.05520, Sec. 3.3, as faiss does it): take a non-empty cluster
    j, drawn with probability ~ (|j| - 1) as faiss draws it, copy its centroid with a small
    perturbation +-delta and reassign j's points to the nearer of the two. That nearest-of-two
    split is a cut of j's points by a hyperplane normal to delta; here the hyperplane passes
    through the median of the points' projections on delta rather than through the centroid, so
    both halves are non-empty whenever |j| >= 2, even when all of j's points lie on one side.
    The ids of the empty cluster e and of j are the only ones that change. Needs N >= k.
    """
    k, ids = len(centers), ids.clone()
    counts = torch.bincount(ids, minlength=k).cpu()
    for e in (counts == 0).nonzero().flatten().tolist():
        splittable = (counts - 1).clamp_min(0).double()
        j = int(torch.multinomial(splittable / splittable.sum(), 1, generator=generator))
        members = (ids == j).nonzero().flatten()  # (|j|,)
        delta = torch.randn(x.shape[1], generator=generator).to(x)  # the perturbation's direction
        along = (x[members] - centers[j]) @ delta  # (|j|,)
        moved = members[along.argsort(stable=True)[len(members) // 2:]]  # the half furthest along +delta
        ids[moved] = e
        counts[e], counts[j] = len(moved), counts[j] - len(moved)
    return ids


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None, *,
           init: str = "k-means++", reseed_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster x (N, D) into k clusters.

    Seeding (``init``): k-means++, or k distinct samples drawn uniformly ("random", faiss's
    default, which DeepCluster used). Then ``iters`` rounds of assign-to-nearest and move-to-mean;
    with ``reseed_empty`` every assignment is followed by :func:`split_empty`, so no cluster is
    empty in the result; without it an empty cluster keeps its centre.

    Returns: centres (k, D) after the last update and the assignments (N,) of x to its nearest
    centre (then split, with ``reseed_empty``).
    """
    if x.dim() != 2 or x.shape[0] < k or k < 1:
        raise ValueError(f"k-means needs samples (N, D) with N >= k >= 1; got {tuple(x.shape)} for k={k}")
    if iters < 0 or init not in INITS:
        raise ValueError(f"k-means needs iters >= 0 and init in {INITS}; got {iters} and {init!r}")
    if init == "k-means++":
        centers = _kmeans_pp(x, k, generator)
    else:
        centers = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)]
    for _ in range(iters):
        ids = nearest(x, centers)
        if reseed_empty:
            ids = split_empty(x, ids, centers, generator)
        centers = means(x, ids, centers)
    ids = nearest(x, centers)
    if reseed_empty:
        ids = split_empty(x, ids, centers, generator)
    return centers, ids
