"""Linear probes on frozen features: two protocols.

``lbfgs`` (the default): multinomial logistic regression on standardised features, fitted full
batch by L-BFGS, the protocol of Kornblith et al. (arXiv:1805.08974) that SimCLR's transfer
tables use. Deterministic, and no learning rate to tune.

``mae``: the linear probe of MAE (arXiv:2111.06377, appendix A.2): BatchNorm without affine
parameters on the features, then a linear layer trained by SGD with momentum 0.9, weight decay 0,
batch 256, base rate 0.1 (scaled by batch / 256), a linear warm-up and a cosine decay over a fixed
number of epochs. MAE uses LARS at batch 16384 and random-resized-crop views; here plain SGD runs
on the frozen features of one fixed view, which a CPU can afford.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.config import ConfigError
from mmssl.optim import warmup_cosine

PROTOCOLS = {
    "lbfgs": "features standardised with the train mean and std, logistic regression by L-BFGS",
    "mae": "MAE protocol: BatchNorm without affine, then a linear layer by SGD (momentum 0.9, cosine schedule)",
}


def check_protocol(protocol: str) -> str:
    """``protocol`` if it names a linear-probe protocol, else a ConfigError naming the choices."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"linear_protocol must be {' or '.join(PROTOCOLS)}, not '{protocol}'")
    return protocol


def _check(train_x: torch.Tensor, test_x: torch.Tensor) -> None:
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("a linear probe needs non-empty train and test features")


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int | None = None,
    l2: float = 1e-4,
    max_iter: int = 150,
) -> dict[str, float]:
    """Fit a linear classifier on standardised ``train_x`` (N, D), score ``test_x`` (M, D).

    Full-batch L-BFGS on the convex cross-entropy + ``l2 * ||W||^2`` objective is
    deterministic and needs no learning-rate tuning, which keeps comparisons
    between encoders about the features rather than the optimiser. Every feature is
    standardised (train mean and std), so the penalty weighs each dimension alike whatever
    its scale: an 80-dim MFCC statistic and a 512-dim encoder statistic meet the same prior.
    Returns {"accuracy": test accuracy, "train_accuracy": ...}.
    """
    _check(train_x, test_x)
    train_x, test_x = train_x.double(), test_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # also under an online monitor's no_grad
        opt.step(closure)
    with torch.no_grad():
        train_acc = ((train_x @ weight + bias).argmax(1) == train_y).float().mean().item()
        test_acc = ((test_x @ weight + bias).argmax(1) == test_y).float().mean().item()
    return {"accuracy": test_acc, "train_accuracy": train_acc}


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
    """The linear probe named by ``protocol`` (``lbfgs`` or ``mae``) with its defaults."""
    if check_protocol(protocol) == "mae":
        return mae_linear_probe(train_x, train_y, test_x, test_y, num_classes, seed=seed)
    return linear_probe(train_x, train_y, test_x, test_y, num_classes)

