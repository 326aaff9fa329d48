"""Instance-contrastive losses against loops written from the papers' pseudocode."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmssl.losses import negative_cosine, nt_xent, sinkhorn, swav_loss


def reference_nt_xent(z0, z1, tau):
    """SimCLR, Algorithm 1: interleave the views as z_{2k-1}, z_{2k}; l(i, j) = -log softmax_{k != i}(s_ik / tau)[j]."""
    z = torch.stack([z0, z1], dim=1).reshape(-1, z0.shape[1])  # (2N, D): x_k's two views are neighbours
    n2 = len(z)
    total, correct = 0.0, 0
    for i in range(n2):
        j = i + 1 if i % 2 == 0 else i - 1
        sims = {k: F.cosine_similarity(z[i], z[k], dim=0) / tau for k in range(n2) if k != i}
        denom = sum(torch.exp(s) for s in sims.values())
        total = total - torch.log(torch.exp(sims[j]) / denom)
        correct += int(max(sims, key=lambda k: sims[k].item()) == j)
    return total / n2, correct / n2


def test_nt_xent_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z1 = (z0.detach() + 0.8 * torch.randn(6, 5, generator=g, dtype=torch.float64)).requires_grad_()
    loss, acc = nt_xent(z0, z1, 0.3, return_accuracy=True)
    ref, ref_acc = reference_nt_xent(z0, z1, 0.3)
    torch.testing.assert_close(loss, ref)
    assert acc.item() == pytest.approx(ref_acc) and 0 < ref_acc < 1  # the data leaves some anchors wrong
    for a, b in zip(torch.autograd.grad(loss, [z0, z1]), torch.autograd.grad(ref, [z0, z1])):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(nt_xent(z0, z1, 0.3), loss)


def test_nt_xent_is_fp32_under_autocast():
    z0, z1 = torch.randn(4, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z0, z1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, nt_xent(z0, z1), rtol=0.05, atol=0.05)


def test_negative_cosine_matches_reference_and_stops_gradient():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = negative_cosine(p, z)
    ref = -sum((p[i] @ z[i]) / (p[i].norm() * z[i].norm()) for i in range(5)) / 5
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0
    assert negative_cosine(z.detach(), z.detach()).item() == pytest.approx(-1.0)


def reference_sinkhorn(scores, eps, iters):
    """SwAV, Algorithm 1 (one process), verbatim: Q is K x B."""
    Q = torch.exp(scores / eps).t()
    K, B = Q.shape
    Q /= Q.sum()
    for _ in range(iters):
        Q /= Q.sum(dim=1, keepdim=True)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= B
    return (Q * B).t()


def test_sinkhorn_matches_reference_and_marginals():
    g = torch.Generator().manual_seed(2)
    B, K = 12, 5
    scores = F.normalize(torch.randn(B, 8, generator=g, dtype=torch.float64), dim=1) @ \
        F.normalize(torch.randn(K, 8, generator=g, dtype=torch.float64), dim=1).t()
    q = sinkhorn(scores, eps=0.05, iters=3)
    torch.testing.assert_close(q, reference_sinkhorn(scores, 0.05, 3))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B, dtype=torch.float64))
    # Three rounds move the prototype marginals towards B / K; many rounds reach it.
    softmax_gap = (F.softmax(scores / 0.05, dim=1).sum(dim=0) - B / K).abs().max()
    assert (q.sum(dim=0) - B / K).abs().max() < softmax_gap
    q_many = sinkhorn(scores, eps=0.05, iters=200)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((K,), B / K, dtype=torch.float64))


def test_sinkhorn_is_stable_and_gradient_free():
    scores = (torch.randn(8, 6) * 100).requires_grad_()  # exp(+-2000) over- and underflows without the log domain
    q = sinkhorn(scores, eps=0.05)
    assert torch.isfinite(q).all() and not q.requires_grad and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(dim=1), torch.ones(8))
    with pytest.raises(ValueError):
        sinkhorn(scores[0])


def test_swav_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(3)
    B, K, crops, tau = 4, 6, 4, 0.1
    scores = [torch.randn(B, K, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(crops)]
    codes = [sinkhorn(s, 0.05, 3) for s in scores[:2]]
    total, pairs = 0.0, 0
    for i in range(2):
        for j in range(crops):
            if j == i:
                continue
            for b in range(B):
                denom = sum(math.e ** (scores[j][b, k] / tau) for k in range(K))
                log_p = [torch.log(math.e ** (scores[j][b, k] / tau) / denom) for k in range(K)]
                total = total - sum(codes[i][b, k] * log_p[k] for k in range(K)) / B
            pairs += 1
    ref = total / pairs
    loss = swav_loss(scores, codes, tau, global_crops=2)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, scores), torch.autograd.grad(ref, scores)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        swav_loss(scores, codes[:1], tau, global_crops=2)
