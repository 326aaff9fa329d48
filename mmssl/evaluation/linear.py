"""Linear probes on frozen features: three protocols.

``lbfgs`` (the default): multinomial logistic regression on standardised features, fitted full
batch by L-BFGS, the protocol of Kornblith et al. (arXiv:1805.08974) that SimCLR's transfer
tables use: the L2 penalty is chosen on a held-out part of the training set from log-spaced
values between 1e-6 and 1e5 (the paper's range; a decade apart here, where the paper takes 45
values), then the probe is fitted again on the whole training set with it. Deterministic, and
no learning rate to tune.

``lbfgs_fixed``: the same fit at one fixed L2 (1e-4), with no selection: the image tables'
protocol before 2026-12-06, kept so that their figures can be reproduced.

``mae``: the linear probe of MAE (arXiv:2111.06377, appendix A.2): BatchNorm without affine
parameters on the features, then a linear layer trained by SGD with momentum 0.9, weight decay 0,
batch 256, base rate 0.1 (scaled by batch / 256), a linear warm-up and a cosine decay over a fixed
number of epochs. MAE uses LARS at batch 16384 and random-resized-crop views; here plain SGD runs
on the frozen features of one fixed view, which a CPU can afford.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.config import ConfigError
from mmssl.optim import warmup_cosine

# Kornblith et al. search L2 over 1e-6 .. 1e5; a decade apart keeps an evaluation's cost to 12 fits.
L2_GRID = tuple(10.0**e for e in range(-6, 6))
VAL_FRACTION = 0.2  # of each class's training items, held out to choose the L2
FIXED_L2 = 1e-4

LBFGS = "features standardised with the train mean and std, logistic regression by L-BFGS"
PROTOCOLS = {
    "lbfgs": (f"{LBFGS}, its L2 chosen from 1e-6..1e5 (a decade apart) on {VAL_FRACTION:.0%} of train held out, "
              "then refitted on all of train"),
    "lbfgs_fixed": f"{LBFGS} at L2 {FIXED_L2:g}",
    "mae": "MAE protocol: BatchNorm without affine, then a linear layer by SGD (momentum 0.9, cosine schedule)",
}


def check_protocol(protocol: str) -> str:
    """``protocol`` if it names a linear-probe protocol, else a ConfigError naming the choices."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"linear_protocol must be one of {', '.join(PROTOCOLS)}, not '{protocol}'")
    return protocol


def _check(train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("a linear probe needs non-empty train and test features")


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int,
         start: tuple[torch.Tensor, torch.Tensor] | None = None, tight: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (D, C) and bias (C,) minimising cross-entropy + ``l2 * ||W||^2`` on float64 ``x`` by
    full-batch L-BFGS, from zero or from ``start``. ``tight`` runs to torch's tolerances divided by
    1,000: at a strong penalty the loss is flat enough that the default ones stop before the bias
    reaches the class priors, and the argmax then follows rounding in the tiny weights."""
    tolerances = {"tolerance_grad": 1e-10, "tolerance_change": 1e-12} if tight else {}
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64) if start is None else start[0].clone()
    bias = torch.zeros(num_classes, dtype=torch.float64) if start is None else start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            **tolerances)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # also under an online monitor's no_grad
        opt.step(closure)
    return weight.detach(), bias.detach()


def _standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """float64 copies of ``train_x`` and ``others``, standardised with ``train_x``'s mean and std."""
    train_x = train_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    return [(t.double() - mean) / std for t in (train_x, *others)]


def _accuracy(x: torch.Tensor, y: torch.Tensor, fit: tuple[torch.Tensor, torch.Tensor]) -> float:
    return ((x @ fit[0] + fit[1]).argmax(1) == y).double().mean().item()


def held_out_split(labels: torch.Tensor, fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) indices of ``labels``: a seeded ``fraction`` of each class held out (at least
    one item of a class with two or more, none of a class with one), in index order."""
    gen = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(members[torch.randperm(len(members), generator=gen)[:take]])
    held_out = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return mask.nonzero().flatten(), held_out


def fold_splits(labels: torch.Tensor, folds: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fit, held-out) index pairs for k-fold cross-validation: each class's items, in a seeded order, are
    dealt to the ``folds`` folds in turn, so every item is held out once and each fold holds about a
    ``1 / folds`` share of every class. As in ``held_out_split``, a class with one item is never held
    out; folds left with nothing to hold out (more folds than any class has items) are dropped."""
    gen = torch.Generator().manual_seed(seed)
    fold_of = torch.full((len(labels),), -1, dtype=torch.long)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        if len(members) > 1:
            fold_of[members[torch.randperm(len(members), generator=gen)]] = torch.arange(len(members)) % folds
    pairs = [((fold_of != f).nonzero().flatten(), (fold_of == f).nonzero().flatten()) for f in range(folds)]
    return [(fit, held) for fit, held in pairs if len(held)]


def select_l2(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, grid: Sequence[float] = L2_GRID,
              fraction: float = VAL_FRACTION, seed: int = 0, max_iter: int = 150,
              folds: int = 1) -> tuple[float, dict[float, float]]:
    """The L2 of ``grid`` whose probe, fitted on the training items outside a held-out part
    (``held_out_split``) and standardised with their statistics, scores best on the held-out part;
    ties go to the larger L2. Fits run from the largest L2 down, each starting from the last one's
    solution, so the weakly penalised fits, the slow ones, start near their optimum. ``folds`` > 1
    scores each L2 by k-fold cross-validation instead (``fold_splits``: every training item held out
    once, the accuracy over all of them), the stable choice where a held-out fifth is a few items a class.
    Returns (the chosen L2, {L2: held-out accuracy})."""
    splits = [held_out_split(train_y, fraction, seed)] if folds <= 1 else fold_splits(train_y, folds, seed)
    if not splits or not all(len(val_idx) for _, val_idx in splits):
        raise ValueError("choosing the linear probe's L2 needs two or more training items of some class")
    correct = dict.fromkeys(grid, 0.0)
    for fit_idx, val_idx in splits:
        fit_x, val_x = _standardise(train_x[fit_idx], train_x[val_idx])
        fit_y, val_y = train_y[fit_idx], train_y[val_idx]
        state = None
        for l2 in sorted(grid, reverse=True):
            state = _fit(fit_x, fit_y, num_classes, l2, max_iter, state, tight=True)
            correct[l2] += _accuracy(val_x, val_y, state) * len(val_idx)
    held = sum(len(val_idx) for _, val_idx in splits)
    scores = {l2: correct[l2] / held for l2 in grid}
    best = max(scores.values())
    return max(l2 for l2, acc in scores.items() if acc == best), scores


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int | None = None,
    l2: float | None = FIXED_L2,
    max_iter: int = 150,
    seed: int = 0,
    folds: int = 1,
) -> dict[str, float]:
    """Fit a linear classifier on standardised ``train_x`` (N, D), score ``test_x`` (M, D).

    Full-batch L-BFGS on the convex cross-entropy + ``l2 * ||W||^2`` objective is
    deterministic and needs no learning-rate tuning, which keeps comparisons
    between encoders about the features rather than the optimiser. Every feature is
    standardised (train mean and std), so the penalty weighs each dimension alike whatever
    its scale: an 80-dim MFCC statistic and a 512-dim encoder statistic meet the same prior.
    ``l2=None`` chooses the penalty on a held-out part of the training set (``select_l2``,
    ``seed`` draws the part; ``folds`` > 1 cross-validates over all of it instead) and then fits on all of it.
    Returns {"accuracy": test accuracy, "train_accuracy": ..., "l2": the penalty used}, and
    with ``l2=None`` also "l2_scores": {L2: held-out accuracy}.
    """
    _check(train_x, test_x)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    extra: dict = {}
    chosen = l2 is None
    if chosen:
        l2, extra["l2_scores"] = select_l2(train_x, train_y, num_classes, seed=seed, max_iter=max_iter, folds=folds)
    train_x, test_x = _standardise(train_x, test_x)
    fit = _fit(train_x, train_y, num_classes, l2, max_iter, tight=chosen)
    return {"accuracy": _accuracy(test_x, test_y, fit), "train_accuracy": _accuracy(train_x, train_y, fit), "l2": l2,
            **extra}


def mae_head(dim: int, num_classes: int) -> nn.Sequential:
    """MAE's probe head: BatchNorm1d without affine (eps 1e-6), then a linear layer whose weight
    starts from a normal of std 0.01 (truncated at 2 std) and whose bias starts at zero."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01, a=-0.02, b=0.02)
    nn.init.zeros_(head[1].bias)
    return head


def mae_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 90,
    batch_size: int = 256,
    base_lr: float = 0.1,
    warmup_epochs: int = 10,
    momentum: float = 0.9,
    seed: int = 0,
) -> dict[str, float]:
    """MAE's linear probe on frozen features ``train_x`` (N, D), scored on ``test_x`` (M, D).

    Each epoch walks a seeded permutation of the train set in batches of min(batch_size, N),
    dropping the incomplete last batch as MAE's loader does; the rate is
    ``base_lr * batch / 256`` after a linear warm-up of ``warmup_epochs``, then half a cosine
    to 0, set every step. The test set is scored with the BatchNorm's running statistics.
    Nothing is drawn from the global RNG. Returns {"accuracy": ..., "train_accuracy": ...}.
    """
    _check(train_x, test_x)
    if len(train_x) < 2:
        raise ValueError("the MAE linear probe needs at least 2 train items (BatchNorm batch statistics)")
    if epochs < 1 or batch_size < 1 or warmup_epochs < 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, warmup_epochs >= 0; got {epochs}, {batch_size}, {warmup_epochs}")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    train_x, test_x, train_y = train_x.float().cpu(), test_x.float().cpu(), train_y.long().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the head's initial weight
        head = mae_head(train_x.shape[1], num_classes)
    batch = min(batch_size, len(train_x))
    per_epoch = len(train_x) // batch
    steps, peak = epochs * per_epoch, base_lr * batch / 256
    opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=momentum, weight_decay=0.0)
    head.train()
    # Gradients and float32 even inside an online monitor's no_grad / CPU autocast.
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        for step in range(steps):
            if step % per_epoch == 0:
                order = torch.randperm(len(train_x), generator=gen)
            idx = order[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, steps, peak, warmup_epochs * per_epoch)
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if not math.isfinite(loss.item()):
        raise ValueError("the MAE linear probe diverged (non-finite loss): check the features for inf or NaN")
    head.eval()
    with torch.no_grad():
        train_acc = (head(train_x).argmax(1) == train_y).float().mean().item()
        test_acc = (head(test_x).argmax(1) == test_y.cpu()).float().mean().item()
    return {"accuracy": test_acc, "train_accuracy": train_acc}


def probe(protocol: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
          num_classes: int | None = None, seed: int = 0) -> dict[str, float]:
    """The linear probe named by ``protocol`` (``lbfgs``, ``lbfgs_fixed`` or ``mae``) with its defaults;
    ``seed`` draws the MAE probe's batches and initial weight, or the held-out part that chooses L2."""
    if check_protocol(protocol) == "mae":
        return mae_linear_probe(train_x, train_y, test_x, test_y, num_classes, seed=seed)
    return linear_probe(train_x, train_y, test_x, test_y, num_classes, l2=None if protocol == "lbfgs" else FIXED_L2,
                        seed=seed)

