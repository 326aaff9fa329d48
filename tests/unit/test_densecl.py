"""DenseCL: the loss against a plain loop over locations, the matching by backbone similarity,
MoCo recovered at dense_weight 0, the dense queue's update, bad settings."""
import math

import pytest
import torch
import torch.nn.functional as F
from lightly.models.utils import select_most_similar
from tiny_encoders import BNEncoder, TinyEncoder

from mmssl.config import ConfigError
from mmssl.objectives.densecl import DenseCL, DenseCLSettings, match_locations
from mmssl.objectives.moco import MoCo
from mmssl.run import resolve_config

B = 4


def views(seed=0, n=B):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    return [x + 0.3 * torch.randn(n, 3, 8, 8, generator=g), x + 0.3 * torch.randn(n, 3, 8, 8, generator=g)]


def build(**kw):
    torch.manual_seed(0)
    objective = DenseCL(TinyEncoder(), **{"proj_hidden": 32, "proj_dim": 16, "queue_size": 10,
                                          "dense_queue_size": 7, "shuffle_bn": 0, **kw})
    with torch.no_grad():  # a key encoder that differs from the online one, as after some training
        for p in [*objective.momentum_encoder.parameters(), *objective.momentum_dense_projector.parameters()]:
            p.add_(0.2 * torch.randn_like(p))
    return objective


def reference_loss(objective, x_q, x_k):
    """The paper's loss for one (query view, key view) pair, written location by location."""
    enc, menc = objective.encoder, objective.momentum_encoder
    h, hk = enc.forward_features(x_q), menc.forward_features(x_k)  # (B, N, D)
    T, lam = objective.temperature, objective.dense_weight

    def nce(q, k, negatives):
        logits = [torch.dot(q, k) / T] + [torch.dot(q, n) / T for n in negatives]
        return -(logits[0] - torch.logsumexp(torch.stack(logits), 0))

    global_terms, dense_terms = [], []
    for b in range(len(h)):
        q = F.normalize(objective.projector(h[b].mean(0)), dim=0)
        k = F.normalize(objective.momentum_projector(hk[b].mean(0)), dim=0)
        global_terms.append(nce(q, k, objective.queue))
        for i in range(h.shape[1]):
            cos = [torch.dot(h[b, i], hk[b, j]) / (h[b, i].norm() * hk[b, j].norm()) for j in range(hk.shape[1])]
            best = max(range(len(cos)), key=lambda j: cos[j].item())
            q_i = F.normalize(objective.dense_projector(h[b, i]), dim=0)
            k_j = F.normalize(objective.momentum_dense_projector(hk[b, best]), dim=0)
            dense_terms.append(nce(q_i, k_j, objective.dense_queue))
    g, d = torch.stack(global_terms).mean(), torch.stack(dense_terms).mean()
    return (1 - lam) * g + lam * d, g, d


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_matches_a_loop_over_locations(symmetric):
    objective = build(dense_weight=0.3, symmetric=symmetric)
    x0, x1 = views()
    out = objective({"views": [x0, x1]})
    pairs = [(x0, x1), (x1, x0)] if symmetric else [(x0, x1)]
    with torch.no_grad():
        refs = [reference_loss(objective, q, k) for q, k in pairs]
    loss, g, d = (sum(r[i] for r in refs) / len(refs) for i in range(3))
    torch.testing.assert_close(out["loss_global"], g)
    torch.testing.assert_close(out["loss_dense"], d)
    torch.testing.assert_close(out["loss"].detach(), loss)
    assert math.isclose(out["loss"].item(), 0.7 * g.item() + 0.3 * d.item(), rel_tol=1e-5)
    out["loss"].backward()
    assert objective.dense_projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.momentum_dense_projector.parameters())


def test_matching_picks_the_most_similar_backbone_location():
    g = torch.Generator().manual_seed(0)
    h_q = torch.randn(3, 9, 5, generator=g)
    perm = torch.stack([torch.randperm(9, generator=g) for _ in range(3)])  # key location j holds query perm[j]
    scale = torch.rand(3, 9, 1, generator=g) + 0.1  # cosine: the feature's length does not count
    h_k = torch.stack([h_q[b, perm[b]] for b in range(3)]) * scale
    idx = match_locations(h_q, h_k)
    assert torch.equal(idx, torch.argsort(perm, dim=1))  # query location i finds key location perm^-1(i)
    # lightly's DenseCL helper picks the same key location (its values: the locations' own numbers)
    h_k = torch.randn(3, 9, 5, generator=g)
    values = torch.arange(9.0)[None, :, None].expand(3, 9, 1)
    assert torch.equal(match_locations(h_q, h_k), select_most_similar(h_q, h_k, values)[..., 0].long())


def test_matching_uses_backbone_features_not_projections():
    """A projector that scrambles similarity does not change the positives: the loss at two dense
    projectors equals the reference loss, which matches on backbone tokens."""
    objective = build(dense_weight=1.0)
    x0, x1 = views(seed=3)
    with torch.no_grad():
        objective.dense_projector[0].weight.mul_(-3.0)
        out = objective({"views": [x0, x1]})
        torch.testing.assert_close(out["loss"], reference_loss(objective, x0, x1)[0])


@pytest.mark.parametrize("shuffle_bn", [0, 2])
def test_dense_weight_zero_is_moco(shuffle_bn):
    """Same weights, same inputs, same shuffle: MoCo's loss, gradients and queue."""
    torch.manual_seed(0)
    moco = MoCo(BNEncoder(), proj_hidden=32, proj_dim=16, queue_size=10, symmetric=True, shuffle_bn=shuffle_bn)
    dense = DenseCL(BNEncoder(), proj_hidden=32, proj_dim=16, queue_size=10, symmetric=True, shuffle_bn=shuffle_bn,
                    dense_weight=0.0)
    missing, unexpected = dense.load_state_dict(moco.state_dict(), strict=False)
    assert not unexpected and all("dense" in name for name in missing)
    batch = {"views": views(seed=1)}
    outs = []
    for objective in (moco, dense):
        torch.manual_seed(7)  # shuffle-BN's permutation
        out = objective(batch)
        out["loss"].backward()
        objective.after_step(1, 10)
        outs.append(out)
    torch.testing.assert_close(outs[1]["loss"], outs[0]["loss"])
    for name, p in moco.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(dense.get_parameter(name).grad, p.grad, msg=name)
    torch.testing.assert_close(dense.queue, moco.queue)
    assert int(dense.queue_ptr) == int(moco.queue_ptr) == 2 * B


def test_dense_queue_takes_pooled_dense_keys_once_per_step():
    objective = build(momentum=0.9)
    opt = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.5)
    queue, dense_queue = objective.queue.clone(), objective.dense_queue.clone()
    batches = [views(seed=1), views(seed=2)]
    with torch.no_grad():  # the pooled dense key of each image: mean of its projected key locations
        expected = torch.cat([F.normalize(objective.momentum_dense_projector(
            objective.momentum_encoder.forward_features(v[1])).mean(1), dim=1) for v in batches])
    opt.zero_grad()
    for v in batches:  # two micro-batches, one optimizer step
        (objective({"views": v})["loss"] / 2).backward()
    opt.step()
    torch.testing.assert_close(objective.dense_queue, dense_queue)  # forward only collects
    torch.testing.assert_close(objective.queue, queue)
    before = [p.clone() for p in objective.momentum_dense_projector.parameters()]
    objective.after_step(1, 10)
    assert int(objective.dense_queue_ptr) == (2 * B) % 7 and int(objective.queue_ptr) == 2 * B
    # 8 keys into 7 slots: the newest 7 survive, key j at slot j - 1 (the first one overwritten)
    torch.testing.assert_close(objective.dense_queue[:], torch.cat([expected[7:], expected[1:7]]))
    online = list(objective.dense_projector.parameters())
    for new, old, o in zip(objective.momentum_dense_projector.parameters(), before, online):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * o.detach())
    objective.eval()
    objective({"views": batches[0]})  # evaluation forwards feed no queue
    assert not objective._pending_dense and not objective._pending


def test_bad_settings_fail_with_one_line(tmp_path):
    for kw in ({"dense_weight": 1.5}, {"dense_weight": -0.1}, {"dense_queue_size": 0}):
        with pytest.raises(ValueError, match="DenseCL needs dense_weight in"):
            DenseCL(TinyEncoder(), **kw)
    with pytest.raises(ValueError, match="MoCo needs"):  # the inherited settings are checked too
        DenseCL(TinyEncoder(), temperature=0.0)
    task, cfg = resolve_config("densecl_image", None, {"output_dir": str(tmp_path)}, ["objective.dense_weight=2"])
    with pytest.raises(ConfigError, match="objective \\(densecl\\): DenseCL needs") as err:
        task.build_objective(cfg)
    assert "\n" not in str(err.value)


def test_the_paper_defaults():
    s = DenseCLSettings()
    assert (s.dense_weight, s.dense_queue_size, s.queue_size, s.momentum, s.temperature, s.proj_hidden,
            s.proj_dim, s.symmetric) == (0.5, 65536, 65536, 0.999, 0.2, 2048, 128, False)
