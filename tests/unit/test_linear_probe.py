"""The L-BFGS linear probe's L2 chosen on held-out training items (Kornblith et al.'s protocol)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmssl.evaluation.linear import L2_GRID, fold_splits, held_out_split, linear_probe, probe, select_l2


def _blobs(n: int, dim: int, informative: int, seed: int, shift: float = 1.0):
    """Three classes apart along the first ``informative`` dimensions only; the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, informative, generator=torch.Generator().manual_seed(99)) * shift
    x = torch.randn(n, dim, generator=g)
    x[:, :informative] += centres[y]
    return x, y


def test_held_out_split_takes_a_seeded_share_of_each_class():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, held = held_out_split(y, 0.2, seed=3)
    assert sorted((*fit.tolist(), *held.tolist())) == list(range(len(y)))  # a partition
    assert [int((y[held] == c).sum()) for c in range(4)] == [2, 1, 0, 1]  # 20% rounded, >= 1, never a whole class
    assert torch.equal(held_out_split(y, 0.2, seed=3)[1], held)
    assert not torch.equal(held_out_split(y, 0.2, seed=4)[1], held)


def _plain_choice(x, y, grid, seed):
    """The selection written out: each L2 fitted from zero on the fit part (the fixed-L2 probe), scored on
    the held-out part; the best, ties to the larger L2."""
    fit, held = held_out_split(y, 0.2, seed)
    scores = {l2: linear_probe(x[fit], y[fit], x[held], y[held], num_classes=3, l2=l2, max_iter=500)["accuracy"]
              for l2 in grid}
    best = max(scores.values())
    return max(l2 for l2, acc in scores.items() if acc == best), scores


def test_fold_splits_hold_every_item_out_once_and_share_each_class():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    splits = fold_splits(y, 5, seed=3)
    held = torch.cat([h for _, h in splits])
    assert sorted(held.tolist()) == [i for i in range(len(y)) if i != 15]  # all once, but the class of one item
    for fit, h in splits:
        assert sorted((*fit.tolist(), *h.tolist())) == list(range(len(y)))  # each pair a partition
        assert int((y[h] == 0).sum()) == 2 and int((y[h] == 1).sum()) == 1  # a fifth of each class
    assert len(fold_splits(torch.tensor([0, 1]), 5)) == 0 and len(fold_splits(torch.tensor([0, 0, 1, 1]), 5)) == 2
    assert [h.tolist() for _, h in fold_splits(y, 5, seed=3)] == [h.tolist() for _, h in splits]  # seeded


def test_select_l2_by_folds_matches_cross_validation_written_out():
    x, y = _blobs(150, 40, 4, seed=2, shift=0.6)
    grid = (1e-4, 1e-2, 1.0, 100.0)
    chosen, scores = select_l2(x, y, 3, grid=grid, seed=1, max_iter=500, folds=5)
    want = {}
    for l2 in grid:  # each fold fitted from zero at this L2 (the fixed-L2 probe), its held-out items scored
        hits = sum(linear_probe(x[f], y[f], x[h], y[h], num_classes=3, l2=l2, max_iter=500)["accuracy"] * len(h)
                   for f, h in fold_splits(y, 5, seed=1))
        want[l2] = hits / len(y)
    best = max(want.values())
    assert chosen == max(l2 for l2, a in want.items() if a == best) and scores == pytest.approx(want, abs=1e-9)


def test_select_l2_matches_the_selection_written_out():
    x, y = _blobs(300, 40, 4, seed=0, shift=0.6)
    grid = (1e-4, 1e-2, 1e-1, 1.0, 10.0)
    chosen, scores = select_l2(x, y, 3, grid=grid, seed=1, max_iter=500)
    want, want_scores = _plain_choice(x, y, grid, seed=1)
    assert chosen == want and scores == pytest.approx(want_scores, abs=1e-9), (scores, want_scores)


def _low_rank(n: int, seed: int):
    """600 features spanned by 10 latent factors plus faint noise, labels from two factors with 30% of them
    redrawn: a fit at a small penalty explains the redrawn labels with the faint directions."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 10, generator=g)
    y = (z[:, 0] > 0).long() + (z[:, 1] > 0).long()
    y = torch.where(torch.rand(n, generator=g) < 0.3, torch.randint(0, 3, (n,), generator=g), y)
    mixing = torch.randn(10, 600, generator=torch.Generator().manual_seed(7))
    return z @ mixing + 0.05 * torch.randn(n, 600, generator=g), y


def test_chosen_l2_beats_a_fixed_small_one_on_correlated_noisy_features_and_keeps_clean_ones():
    fixed, chosen = [], []
    for seed in range(3):
        x, y = _low_rank(900, seed)
        fixed.append(linear_probe(x[:300], y[:300], x[300:], y[300:], l2=1e-4))
        chosen.append(linear_probe(x[:300], y[:300], x[300:], y[300:], l2=None, seed=0))
    assert all(run["train_accuracy"] > 0.9 for run in fixed) and all(run["l2"] >= 1e-2 for run in chosen), chosen
    mean = [sum(run["accuracy"] for run in runs) / 3 for runs in (fixed, chosen)]
    assert mean[1] > mean[0] + 0.02, mean
    assert set(chosen[0]["l2_scores"]) == set(L2_GRID)
    # Well separated: the penalties from 100 up leave only the class priors (two thirds held out right at
    # best), so one below them is chosen, where the classes separate.
    x, y = _blobs(300, 5, 5, seed=3, shift=4.0)
    clean = linear_probe(x[:200], y[:200], x[200:], y[200:], l2=None)
    assert clean["l2_scores"][1e5] < 0.7 and clean["l2"] <= 10 and clean["accuracy"] > 0.95, clean


def test_the_fixed_protocol_is_the_old_fit_and_the_default_chooses():
    x, y = _blobs(200, 30, 4, seed=4, shift=0.8)
    old = linear_probe(x[:150], y[:150], x[150:], y[150:])  # l2 1e-4, the default of the function
    assert probe("lbfgs_fixed", x[:150], y[:150], x[150:], y[150:]) == old and old["l2"] == 1e-4
    chosen = probe("lbfgs", x[:150], y[:150], x[150:], y[150:], seed=5)
    assert "l2_scores" in chosen and chosen == probe("lbfgs", x[:150], y[:150], x[150:], y[150:], seed=5)
    # The fit itself: the loss at the returned penalty is at its minimum (gradient near zero).
    xs = (x[:150].double() - x[:150].double().mean(0)) / x[:150].double().std(0)
    w = torch.zeros(30, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, y[:150]) + chosen["l2"] * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    test = ((x[150:].double() - x[:150].double().mean(0)) / x[:150].double().std(0) @ w + b).argmax(1)
    assert chosen["accuracy"] == pytest.approx((test == y[150:]).double().mean().item())


def test_selection_needs_a_class_with_two_items():
    with pytest.raises(ValueError, match="two or more training items"):
        linear_probe(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(2, 4), torch.tensor([0, 1]), l2=None)
