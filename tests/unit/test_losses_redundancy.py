"""Barlow Twins', VICReg's and SupCon's losses against loops written from the papers' pseudocode,
and against lightly's BarlowTwinsLoss / VICRegLoss on the same tensors."""
import pytest
import torch
import torch.nn.functional as F

from mmssl.losses import nt_xent
from mmssl.objectives.barlow_twins import barlow_twins_loss
from mmssl.objectives.supcon import supcon_loss
from mmssl.objectives.vicreg import vicreg_loss


def pair(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    za = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    zb = (za.detach() + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_()
    return za, zb


def standardised(z, eps):
    """Column by column: (z - mean) / sqrt(biased variance + eps), BatchNorm in training mode."""
    n, d = z.shape
    cols = []
    for j in range(d):
        mean = sum(z[k, j] for k in range(n)) / n
        var = sum((z[k, j] - mean) ** 2 for k in range(n)) / n
        cols.append(torch.stack([(z[k, j] - mean) / (var + eps) ** 0.5 for k in range(n)]))
    return torch.stack(cols, dim=1)


def reference_barlow(za, zb, lambd, eps=1e-5):
    """Barlow Twins, Algorithm 1: c = z_a_norm^T z_b_norm / N; sum (c - I)^2, off-diagonal terms times lambda."""
    n, d = za.shape
    a, b = standardised(za, eps), standardised(zb, eps)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2)
    return loss


def test_barlow_twins_matches_loop_reference():
    za, zb = pair()
    loss = barlow_twins_loss(za, zb, lambd=0.3)
    ref = reference_barlow(za, zb, 0.3)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, [za, zb]), torch.autograd.grad(ref, [za, zb])):
        torch.testing.assert_close(a, b)
    # identical, decorrelated views give C = I (up to eps): no loss
    x = torch.randn(64, 4, dtype=torch.float64)
    z = 8 * torch.linalg.qr(x - x.mean(0))[0]  # centred orthogonal columns of variance 1
    assert barlow_twins_loss(z, z).item() < 1e-6
    with pytest.raises(ValueError):
        barlow_twins_loss(za, zb[:3])


def reference_vicreg(za, zb, lam, mu, nu, gamma=1.0, eps=1e-4):
    """VICReg, Algorithm 1 (and eq. 6), with its reductions written as loops."""
    n, d = za.shape
    sim = sum((za[k, j] - zb[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    std, cov = 0.0, 0.0
    for z in (za, zb):
        mean = [sum(z[k, j] for k in range(n)) / n for j in range(d)]
        for j in range(d):
            var = sum((z[k, j] - mean[j]) ** 2 for k in range(n)) / (n - 1)
            std = std + torch.relu(gamma - (var + eps) ** 0.5) / d
        for i in range(d):
            for j in range(d):
                if i != j:
                    c_ij = sum((z[k, i] - mean[i]) * (z[k, j] - mean[j]) for k in range(n)) / (n - 1)
                    cov = cov + c_ij ** 2 / d
    return lam * sim + mu * std + nu * cov


def test_vicreg_matches_loop_reference():
    za, zb = pair(seed=1)
    # halved, the std is about 0.5-0.7: the hinge is active in every dimension
    out = vicreg_loss(0.5 * za, 0.5 * zb, 25.0, 25.0, 1.0)
    ref = reference_vicreg(0.5 * za, 0.5 * zb, 25.0, 25.0, 1.0)
    torch.testing.assert_close(out["loss"], ref)
    for a, b in zip(torch.autograd.grad(out["loss"], [za, zb]), torch.autograd.grad(ref, [za, zb])):
        torch.testing.assert_close(a, b)
    assert out["variance"] > 0 and out["covariance"] > 0 and out["invariance"] > 0
    # spread-out, equal views: every term but the covariance of the rows is zero
    z = 3 * torch.randn(200, 4, dtype=torch.float64)
    parts = vicreg_loss(z, z)
    assert parts["invariance"] == 0 and parts["variance"] == 0
    with pytest.raises(ValueError):
        vicreg_loss(za[:1], zb[:1])


def reference_supcon(za, zb, labels, tau):
    """SupCon, eq. 2 (L_out): views as 2N anchors; P(i) the others with i's label, A(i) all others."""
    z = F.normalize(torch.cat([za, zb]), dim=1)
    y = torch.cat([labels, labels]).tolist()
    total = 0.0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        denom = sum(torch.exp(z[i] @ z[a] / tau) for a in others)
        positives = [p for p in others if y[p] == y[i]]
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / tau) / denom) for p in positives) / len(positives)
    return total / len(z)


def test_supcon_matches_loop_reference():
    za, zb = pair(n=8, seed=2)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    loss, acc = supcon_loss(za, zb, labels, 0.2, return_accuracy=True)
    ref = reference_supcon(za, zb, labels, 0.2)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, [za, zb]), torch.autograd.grad(ref, [za, zb])):
        torch.testing.assert_close(a, b)
    assert 0 <= acc.item() <= 1 and not acc.requires_grad
    with pytest.raises(ValueError):
        supcon_loss(za, zb, labels[:3])


def test_supcon_with_one_positive_per_anchor_is_nt_xent():
    """Every label once per batch: each view's only positive is its other view, SimCLR's NT-Xent."""
    za, zb = pair(n=7, seed=3)
    labels = torch.randperm(7, generator=torch.Generator().manual_seed(0)) + 10
    loss, acc = supcon_loss(za, zb, labels, 0.3, return_accuracy=True)
    ref, ref_acc = nt_xent(za, zb, 0.3, return_accuracy=True)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(acc, ref_acc)
    for a, b in zip(torch.autograd.grad(loss, [za, zb]), torch.autograd.grad(ref, [za, zb])):
        torch.testing.assert_close(a, b)
    # unlabelled items (-1) are classes of their own, not one shared class
    torch.testing.assert_close(supcon_loss(za, zb, torch.full((7,), -1), 0.3), ref)
    # shared labels change it
    assert not torch.allclose(supcon_loss(za, zb, torch.zeros(7, dtype=torch.long), 0.3), ref)


def test_losses_are_fp32_under_autocast():
    z0, z1 = torch.randn(16, 8), torch.randn(16, 8)
    labels = torch.arange(16) % 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [barlow_twins_loss(z0, z1), vicreg_loss(z0, z1)["loss"], supcon_loss(z0, z1, labels)]
    for got, want in zip(losses, [barlow_twins_loss(z0, z1), vicreg_loss(z0, z1)["loss"], supcon_loss(z0, z1, labels)]):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


def test_barlow_twins_equals_lightly():
    """lightly's BarlowTwinsLoss standardises with F.batch_norm (biased variance, eps 1e-5), as here."""
    from lightly import loss as lightly_loss

    za, zb = pair(n=32, d=16, seed=4)
    ours = barlow_twins_loss(za, zb, lambd=0.0051)
    theirs = lightly_loss.BarlowTwinsLoss(lambda_param=0.0051)(za, zb)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, [za, zb]), torch.autograd.grad(theirs, [za, zb])):
        torch.testing.assert_close(a, b)


def test_vicreg_equals_lightly_with_the_variance_term_halved():
    """lightly, like the authors' code, weighs the variance term by mu / 2; the paper's eq. 6 by mu."""
    from lightly import loss as lightly_loss

    za, zb = pair(n=32, d=16, seed=5)
    ours = vicreg_loss(0.3 * za, 0.3 * zb, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)["loss"]
    theirs = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=50.0, nu_param=1.0)(0.3 * za, 0.3 * zb)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, [za, zb]), torch.autograd.grad(theirs, [za, zb])):
        torch.testing.assert_close(a, b)
    same_mu = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0)(0.3 * za, 0.3 * zb)
    assert not torch.allclose(ours, same_mu)
