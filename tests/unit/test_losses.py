import torch
import torch.nn.functional as F

from mmssl.losses import cpc_info_nce, info_nce


def reference_cpc(pred, pool, pos_index, neg_index):
    """Loop over steps and positions, straight from the CPC paper's InfoNCE."""
    K, N, _ = pred.shape
    losses, accs = [], []
    for k in range(K):
        total, correct = 0.0, 0
        for n in range(N):
            pos = torch.dot(pred[k, n], pool[pos_index[k, n]])
            negs = [torch.dot(pred[k, n], pool[j]) for j in neg_index[n].tolist() if j != pos_index[k, n]]
            logits = torch.stack([pos, *negs])
            total = total - F.log_softmax(logits, 0)[0]
            correct += int(logits.argmax() == 0)
        losses.append(total / N)
        accs.append(correct / N)
    return torch.stack(losses), torch.tensor(accs)


def test_cpc_info_nce_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    K, N, P, M, D = 3, 10, 25, 6, 5
    pred = torch.randn(K, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    pool = torch.randn(P, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos_index = torch.randint(P, (K, N), generator=g)
    neg_index = torch.randint(P, (N, M), generator=g)
    neg_index[0, :2] = pos_index[0, 0]  # a sampled negative equal to the positive is masked out
    loss, acc = cpc_info_nce(pred, pool, pos_index, neg_index)
    ref_loss, ref_acc = reference_cpc(pred, pool, pos_index, neg_index)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(acc.double(), ref_acc.double())
    g1 = torch.autograd.grad(loss.sum(), [pred, pool])
    g2 = torch.autograd.grad(ref_loss.sum(), [pred, pool])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_cpc_info_nce_leaves_invalid_positions_out():
    g = torch.Generator().manual_seed(2)
    K, N, P, M, D = 2, 8, 20, 5, 4
    pred = torch.randn(K, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    pool = torch.randn(P, D, generator=g, dtype=torch.float64)
    pos_index, neg_index = torch.randint(P, (K, N), generator=g), torch.randint(P, (N, M), generator=g)
    valid = torch.ones(K, N, dtype=torch.bool)
    valid[1, 5:] = False  # step 2 scores the first 5 positions only
    loss, acc = cpc_info_nce(pred, pool, pos_index, neg_index, valid)
    for k, n in ((0, N), (1, 5)):  # each step's figures are those of its valid positions alone
        ref_loss, ref_acc = reference_cpc(pred[k : k + 1, :n], pool, pos_index[k : k + 1, :n], neg_index[:n])
        torch.testing.assert_close(loss[k : k + 1], ref_loss)
        torch.testing.assert_close(acc[k : k + 1].double(), ref_acc.double())
    (grad,) = torch.autograd.grad(loss.sum(), [pred])
    assert grad[1, 5:].abs().max() == 0 and grad[1, :5].abs().max() > 0


def test_info_nce_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    N, M, D, tau = 6, 4, 3, 0.5
    q, k = torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(N, D, generator=g, dtype=torch.float64)
    negs = torch.randn(N, M, D, generator=g, dtype=torch.float64)
    ref = torch.stack([
        -F.log_softmax(torch.stack([q[i] @ k[i], *[q[i] @ negs[i, j] for j in range(M)]]) / tau, 0)[0] for i in range(N)
    ]).mean()
    torch.testing.assert_close(info_nce(q, k, negs, tau), ref)
    shared = negs[0]
    ref_shared = torch.stack([
        -F.log_softmax(torch.stack([q[i] @ k[i], *[q[i] @ shared[j] for j in range(M)]]) / tau, 0)[0] for i in range(N)
    ]).mean()
    torch.testing.assert_close(info_nce(q, k, shared, tau), ref_shared)


def test_cpc_loss_is_low_when_predictions_are_right():
    pool = torch.eye(8)
    pos_index = torch.arange(8)[None]  # (1, 8)
    neg_index = torch.stack([torch.roll(torch.arange(8), s) for s in range(1, 5)], 1)  # never the positive
    loss, acc = cpc_info_nce(10 * pool[None], pool, pos_index, neg_index)
    assert acc.item() == 1.0 and loss.item() < 1e-3
    loss, acc = cpc_info_nce(-10 * pool[None], pool, pos_index, neg_index)
    assert acc.item() == 0.0 and loss.item() > 5
