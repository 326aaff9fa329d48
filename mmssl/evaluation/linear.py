"""Linear probes on frozen features: multinomial logistic regression, full batch L-BFGS."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    between encoders about the features rather than the optimiser.
    Returns {"accuracy": test accuracy, "train_accuracy": ...}.
    """
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("a linear probe needs non-empty train and test features")
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

    opt.step(closure)
    with torch.no_grad():
        train_acc = ((train_x @ weight + bias).argmax(1) == train_y).float().mean().item()
        test_acc = ((test_x @ weight + bias).argmax(1) == test_y).float().mean().item()
    return {"accuracy": test_acc, "train_accuracy": train_acc}
