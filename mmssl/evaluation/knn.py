"""Frozen-feature extraction and the weighted kNN classifier of Wu et al. (arXiv:1805.01978).

The kNN protocol is the one solo-learn and DINO (arXiv:2104.14294) report: cosine similarity
between L2-normalised features, the top-k training neighbours of each test item vote for their
class with weight exp(sim / T), and the class with the largest summed vote wins.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.config import ConfigError

KS = (20, 200)  # solo-learn's and DINO's neighbour counts
TEMPERATURE = 0.07  # the vote weight exp(sim / T) of Wu et al. and solo-learn


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {ks}")
    return ks


@torch.no_grad()
def knn_predict(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    ks: Sequence[int] = KS,
    temperature: float = TEMPERATURE,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[int, torch.Tensor]:
    """Weighted kNN predictions for each k.

    Args:
        train_x: (N, D) training features; train_y: (N,) labels in 0..C-1.
        test_x: (M, D) features to classify.
        ks: neighbour counts; a k above N is clipped to N (every training item votes).
        temperature: T in the vote weight exp(sim / T).
        num_classes: C; by default max(train_y) + 1.
        chunk: test rows per similarity block, so memory is (chunk, N) rather than (M, N).
    Returns:
        {k: predicted labels (M,) int64}, on train_x's device. Ties go to the lower class index.
    """
    ks = _check_ks(ks)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"expected features (N, D) and (M, D), got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if len(train_x) == 0 or len(train_y) != len(train_x):
        raise ValueError(f"need a non-empty train set with one label per row, got {len(train_x)} rows, {len(train_y)} labels")
    if temperature <= 0 or chunk < 1:
        raise ValueError(f"temperature and chunk must be positive, got {temperature} and {chunk}")
    train_y = train_y.to(train_x.device).long()
    if train_y.min() < 0:
        raise ValueError("train labels must be >= 0; drop unlabelled items (-1) before kNN")
    num_classes = num_classes or int(train_y.max()) + 1
    train_n = F.normalize(train_x.float(), dim=1)
    k_max = min(max(ks), len(train_n))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start : start + chunk].to(train_n.device).float(), dim=1)
        # fp32 under a caller's autocast too (the online monitor runs inside the training step's): bf16
        # similarities would tie neighbours 0.004 apart and give bf16 votes
        with torch.autocast(q.device.type, enabled=False):
            sim, idx = (q @ train_n.T).topk(k_max, dim=1)  # (c, k_max), sorted by decreasing similarity
        # Subtracting each row's best similarity scales that row's votes by one constant: the
        # argmax is unchanged and exp cannot overflow at small temperatures.
        weight = ((sim - sim[:, :1]) / temperature).exp()
        labels = train_y[idx]  # (c, k_max)
        for k in ks:
            votes = torch.zeros(len(q), num_classes, device=q.device)
            votes.scatter_add_(1, labels[:, : min(k, k_max)], weight[:, : min(k, k_max)])  # (c, C)
            preds[k].append(votes.argmax(1))
    empty = torch.zeros(0, dtype=torch.long, device=train_n.device)
    return {k: torch.cat(p) if p else empty for k, p in preds.items()}


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ks: Sequence[int] = KS,
    temperature: float = TEMPERATURE,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[int, float]:
    """Weighted kNN accuracy on (test_x (M, D), test_y (M,)) for each requested k.

    See ``knn_predict`` for the protocol; returns {k: accuracy in [0, 1]} keyed by the
    requested k even where it was clipped to the train set's size.
    """
    if len(test_x) == 0 or len(test_y) != len(test_x):
        raise ValueError(f"need a non-empty test set with one label per row, got {len(test_x)} rows, {len(test_y)} labels")
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    preds = knn_predict(train_x, train_y, test_x, ks, temperature, num_classes, chunk)
    test_y = test_y.long()
    return {k: (p.cpu() == test_y.cpu()).float().mean().item() for k, p in preds.items()}


READOUTS = ("pooled", "tokens")


def check_readout(readout: str) -> str:
    """``readout`` if it names a readout of ``read_out``, else a ConfigError (a ValueError) naming the choices."""
    if readout not in READOUTS:
        raise ConfigError(f"readout must be {' or '.join(READOUTS)}, not '{readout}'")
    return readout


def read_out(encoder: nn.Module, x: torch.Tensor, readout: str = "pooled") -> torch.Tensor:
    """Frozen features of a batch x: (B, F).

    ``pooled`` is the encoder's own ``pool`` of its tokens (global average pooling for conv nets,
    the mean token for a ViT): the vector that contrastive, clustering and rotation objectives
    train. ``tokens`` concatenates the token map in grid order (B, N * D): nothing is pooled, so
    positions are kept, as raw pixels keep them; it reads an objective whose loss is on the
    tokens themselves (MAE). Every input must give the same number of tokens.
    """
    tokens = encoder.forward_features(x)  # (B, N, D)
    if check_readout(readout) == "pooled":
        return encoder.pool(tokens)
    return tokens.flatten(1)


def _take(source: Any, max_items: int | None) -> range:
    return range(len(source) if max_items is None else min(len(source), max_items))


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    source: Any,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
    max_items: int | None = None,
    readout: str = "pooled",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (``read_out``: pooled, or the token map) of ``source[i]["image"]`` for the
    first ``max_items`` items.

    The encoder runs in eval mode (BatchNorm uses its running statistics, dropout is off) on
    its own device, one call per batch of transformed images; its training flag is restored
    afterwards.
    Returns (features (N, F) float32 on the CPU, labels (N,) int64; -1 marks unlabelled items).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_readout(readout)
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    try:
        indices = _take(source, max_items)
        for start in range(0, len(indices), batch_size):
            items = [source[i] for i in indices[start : start + batch_size]]
            x = torch.stack([transform(it["image"]) for it in items]).to(device)  # (b, 3, S, S)
            feats.append(read_out(encoder, x, readout).float().cpu())  # (b, D) or (b, N * D)
            labels.extend(int(it["label"]) for it in items)
    finally:
        encoder.train(was_training)
    dim = getattr(encoder, "embed_dim", 0) if readout == "pooled" else 0
    features = torch.cat(feats) if feats else torch.zeros(0, dim)
    return features, torch.tensor(labels, dtype=torch.long)


def pixels(
    source: Any,
    transform: Callable[[torch.Tensor], torch.Tensor],
    max_items: int | None = None,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-pixel baseline: transformed images flattened to (N, C * S * S) float32, with labels (N,).

    ``size`` area-averages larger views down to size x size first: at 224 px a raw-pixel
    feature has 150k dimensions, which a linear probe cannot hold for a real train set.
    """
    feats, labels = [], []
    for i in _take(source, max_items):
        item = source[i]
        x = transform(item["image"]).float()  # (C, S, S)
        if size is not None and max(x.shape[-2:]) > size:
            x = F.adaptive_avg_pool2d(x, size)
        feats.append(x.flatten())
        labels.append(int(item["label"]))
    features = torch.stack(feats) if feats else torch.zeros(0, 0)
    return features, torch.tensor(labels, dtype=torch.long)
