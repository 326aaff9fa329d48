import math

import pytest
import torch

from mmssl.config import ConfigError
from mmssl.optim import LARS, make_optimizer


def reference_lars(weights, grads_per_step, lr, momentum, wd, eta, clip, eps=1e-8):
    """LARS written out per element with Python floats, from the paper's update rule: 1-D tensors
    plain SGD with momentum, others rescaled by eta ||w|| / (||g|| + wd ||w||)."""
    ws = [[float(v) for v in w.flatten()] for w in weights]
    bufs = [[0.0] * len(w) for w in ws]
    for grads in grads_per_step:
        for i, (w, g) in enumerate(zip(ws, grads)):
            g = [float(v) for v in g.flatten()]
            if weights[i].ndim > 1:
                w_norm = math.sqrt(sum(v * v for v in w))
                g_norm = math.sqrt(sum(v * v for v in g))
                if w_norm > 0 and g_norm > 0:
                    ratio = eta * w_norm / (g_norm + wd * w_norm + eps)
                    ratio = min(ratio / lr, 1.0) if clip else ratio
                else:
                    ratio = 1.0
                d = [ratio * (gv + wd * wv) for gv, wv in zip(g, w)]
            else:
                d = g
            bufs[i] = [momentum * b + dv for b, dv in zip(bufs[i], d)]
            ws[i] = [wv - lr * b for wv, b in zip(w, bufs[i])]
    return [torch.tensor(w, dtype=torch.float64).reshape(t.shape) for w, t in zip(ws, weights)]


@pytest.mark.parametrize("clip, lr", [(False, 0.5), (True, 0.5), (True, 0.001), (True, 2.0)])
def test_lars_matches_the_update_rule(clip, lr):
    torch.manual_seed(0)
    weight = torch.randn(5, 4, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    zero = torch.zeros(3, 2, dtype=torch.float64)  # ||w|| = 0: ratio 1
    grads = [[torch.randn_like(weight), torch.randn_like(bias), torch.randn_like(zero)] for _ in range(3)]
    params = [torch.nn.Parameter(t.clone()) for t in (weight, bias, zero)]
    opt = LARS(params, lr=lr, momentum=0.9, weight_decay=1e-2, eta=0.02, clip=clip)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    expected = reference_lars([weight, bias, zero], grads, lr, 0.9, 1e-2, 0.02, clip)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_lars_moves_each_layer_by_a_fraction_of_its_norm():
    """The point of LARS: layers whose gradients differ in scale by 1e4 move by the same relative amount."""
    small, large = torch.nn.Parameter(torch.ones(8, 8)), torch.nn.Parameter(torch.ones(8, 8))
    small.grad, large.grad = torch.full((8, 8), 1e-3), torch.full((8, 8), 10.0)
    LARS([small, large], lr=1.0, momentum=0.0, eta=0.02, clip=False).step()
    moved = [(1 - p.detach()).norm() / 8 for p in (small, large)]
    torch.testing.assert_close(moved[0], moved[1], rtol=1e-4, atol=0)
    torch.testing.assert_close(moved[0], torch.tensor(0.02), rtol=1e-4, atol=0)


def test_make_optimizer_names():
    params = [torch.nn.Parameter(torch.randn(2, 2))]
    cpu = torch.device("cpu")
    adamw = make_optimizer(params, cpu, 0.1, 0.0, "adamw", adam_beta2=0.95)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    sgd = make_optimizer(params, cpu, 0.1, 1e-4, "sgd", momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["fused"]
    lars = make_optimizer(params, cpu, 0.1, 1e-4, "lars", lars_eta=0.001, lars_clip=False)
    assert isinstance(lars, LARS) and lars.defaults["eta"] == 0.001 and not lars.defaults["clip"]
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, sgd, lars, not 'adam'"):
        make_optimizer(params, cpu, 0.1, 0.0, "adam")
    with pytest.raises(ValueError, match="LARS: bad"):
        LARS(params, lr=0.1, momentum=1.0)


def test_lars_group_of_mixed_dtypes_steps_each_tensor_as_alone():
    """One group's norms are batched: a float32 weight beside a float64 one steps as it would alone."""
    torch.manual_seed(0)
    inits = [torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float32), torch.randn(3)]
    grads = [[torch.randn_like(t) for t in inits] for _ in range(2)]
    together = [torch.nn.Parameter(t.clone()) for t in inits]
    alone = [[torch.nn.Parameter(t.clone())] for t in inits]
    optimizers = [LARS(together, lr=0.5, weight_decay=1e-2)] + [LARS(p, lr=0.5, weight_decay=1e-2) for p in alone]
    for step in grads:
        for p, q, g in zip(together, alone, step):
            p.grad, q[0].grad = g.clone(), g.clone()
        for opt in optimizers:
            opt.step()
    for p, q in zip(together, alone):
        assert p.dtype == q[0].dtype
        torch.testing.assert_close(p.detach(), q[0].detach(), rtol=0, atol=0)
