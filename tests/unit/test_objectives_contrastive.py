"""Instance-contrastive objectives: gradients reach what they should, and state
(queues, EMA targets, prototypes) changes once per optimizer step, in after_step."""
import pytest
import torch
import torch.nn.functional as F
from host_reads import host_reads
from tiny_encoders import BNEncoder, TinyEncoder

from mmssl.objectives.barlow_twins import BarlowTwins
from mmssl.objectives.byol import BYOL
from mmssl.objectives.moco import MoCo
from mmssl.objectives.rotnet import RotNet
from mmssl.objectives.simclr import SimCLR
from mmssl.objectives.simsiam import SimSiam
from mmssl.objectives.supcon import SupCon
from mmssl.objectives.swav import SwAV
from mmssl.objectives.vicreg import VICReg

B = 8



def images(n=B, size=8, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def two_views(seed=0):
    x = images(seed=seed)
    return {"views": [x + 0.1 * images(seed=seed + 100), x + 0.1 * images(seed=seed + 200)], "label": torch.zeros(B)}


BUILDERS = {
    "simclr": (lambda: SimCLR(TinyEncoder(), proj_hidden=32, proj_dim=16), two_views),
    "simclr_audio": (lambda: SimCLR(TinyEncoder(), proj_hidden=32, proj_dim=16),
                     lambda: {"views": [torch.randn(B, 64), torch.randn(B, 64)]}),  # waveforms (B, L)
    "moco": (lambda: MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, shuffle_bn=0), two_views),
    "moco_symmetric": (lambda: MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, symmetric=True,
                                    shuffle_bn=0), two_views),
    "byol": (lambda: BYOL(TinyEncoder(), proj_hidden=32, proj_dim=16, pred_hidden=24), two_views),
    "simsiam": (lambda: SimSiam(TinyEncoder(), proj_dim=16, pred_hidden=8), two_views),
    "swav": (lambda: SwAV(TinyEncoder(), proj_hidden=32, proj_dim=16, num_prototypes=10),
             lambda: {"views": [images(), images(seed=1), images(size=4, seed=2), images(size=4, seed=3)]}),
    "rotnet": (lambda: RotNet(TinyEncoder()), lambda: {"input": images(), "label": torch.zeros(B)}),
    "barlow_twins": (lambda: BarlowTwins(TinyEncoder(), proj_hidden=32, proj_dim=16), two_views),
    "vicreg": (lambda: VICReg(TinyEncoder(), proj_hidden=32, proj_dim=16), two_views),
    "supcon": (lambda: SupCon(TinyEncoder(), proj_hidden=32, proj_dim=16),
               lambda: {**two_views(), "label": torch.arange(B) % 3}),
}
TARGETS = ("momentum_encoder", "momentum_projector", "target_encoder", "target_projector")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_objective_gradients_reach_online_parameters_only(name):
    build, batch = BUILDERS[name]
    torch.manual_seed(0)
    objective = build()
    out = objective(batch())
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    assert "std" in out and 0 < out["std"].item() < 1
    for key, value in out.items():
        assert value.dim() == 0 and (key == "loss" or not value.requires_grad), key
    out["loss"].backward()
    for n, p in objective.named_parameters():
        if n.split(".")[0] in TARGETS:
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert objective.export_encoder() is objective.encoder


def micro_step(objective, batches, opt):
    """Gradient accumulation: a forward/backward per micro-batch, then one optimizer step."""
    opt.zero_grad()
    for batch in batches:
        (objective(batch)["loss"] / len(batches)).backward()
    opt.step()


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_moco_enqueues_every_micro_batch_and_updates_once():
    torch.manual_seed(0)
    moco = MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, momentum=0.9, shuffle_bn=0)
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.5)
    queue, target = moco.queue.clone(), params(moco.momentum_encoder) + params(moco.momentum_projector)
    batches = [two_views(seed=0), two_views(seed=1)]
    with torch.no_grad():  # the keys the momentum network gives before its update
        keys = [moco._keys([b["views"][1]])[0] for b in batches]
    micro_step(moco, batches, opt)
    # forward changed nothing: the queue waits for after_step
    torch.testing.assert_close(moco.queue, queue)
    assert int(moco.queue_ptr) == 0
    moco.after_step(1, 10)
    assert int(moco.queue_ptr) == 2 * B
    torch.testing.assert_close(moco.queue[: 2 * B], torch.cat(keys))
    torch.testing.assert_close(moco.queue[2 * B:], queue[2 * B:])
    online = params(moco.encoder) + params(moco.projector)
    for new, old, o in zip(params(moco.momentum_encoder) + params(moco.momentum_projector), target, online):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * o)
    moco.after_step(2, 10)  # nothing pending: the queue stays
    assert int(moco.queue_ptr) == 2 * B
    moco.eval()
    moco(batches[0])  # evaluation forwards do not feed the queue
    assert not moco._pending


def test_moco_momentum_schedule():
    torch.manual_seed(0)
    constant = MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, momentum=0.9, shuffle_bn=0)
    assert constant.momentum_at(0, 100) == constant.momentum_at(70, 100) == 0.9
    moco = MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, momentum=0.99, final_momentum=0.999,
                shuffle_bn=0)
    assert moco.momentum_at(0, 100) == pytest.approx(0.99)
    assert moco.momentum_at(50, 100) == pytest.approx(0.9945)
    assert moco.momentum_at(100, 100) == pytest.approx(0.999)
    with torch.no_grad():
        for p in moco.encoder.parameters():
            p.add_(1.0)  # online and momentum weights now differ by 1
    before = params(moco.momentum_encoder)
    moco.after_step(50, 100)
    for new, old, o in zip(params(moco.momentum_encoder), before, params(moco.encoder)):
        torch.testing.assert_close(new, 0.9945 * old + 0.0055 * o)
    with pytest.raises(ValueError, match="MoCo needs"):
        MoCo(TinyEncoder(), final_momentum=1.5)



def test_moco_shuffle_bn_encodes_shuffled_groups():
    """Keys come from the momentum encoder run on two groups of the permuted batch, queries from
    two groups in batch order; the permutation is undone, so key i still belongs to image i."""
    torch.manual_seed(0)
    moco = MoCo(BNEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, shuffle_bn=B // 2)
    x = images()
    torch.manual_seed(5)
    keys = moco._keys([x])[0]
    queries = moco._queries([x])[0]

    def reference(encoder, projector, order):
        h = torch.cat([encoder.pool(encoder.forward_features(x[part])) for part in order.chunk(2)])
        return F.normalize(projector(h[torch.argsort(order)]), dim=1)

    torch.manual_seed(5)
    perm = torch.randperm(B)
    assert not torch.equal(perm, torch.arange(B))
    with torch.no_grad():
        torch.testing.assert_close(keys, reference(moco.momentum_encoder, moco.momentum_projector, perm))
        torch.testing.assert_close(queries, reference(moco.encoder, moco.projector, torch.arange(B)))
        # the groups matter: one BatchNorm batch of all B gives other keys
        whole = F.normalize(moco.momentum_projector(moco.momentum_encoder.pool(moco.momentum_encoder.forward_features(x))), dim=1)
        assert (keys - whole).abs().max() > 1e-3
    with pytest.raises(ValueError, match="shuffle_bn"):
        MoCo(BNEncoder(), shuffle_bn=-1)


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_shuffle_bn_is_exact_without_batchnorm(symmetric):
    """Without BatchNorm grouping and shuffling change nothing: the same loss and gradients."""
    results = []
    for shuffle_bn in (0, 2):
        torch.manual_seed(0)
        moco = MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=20, symmetric=symmetric,
                    shuffle_bn=shuffle_bn)
        out = moco(two_views())
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad for p in moco.parameters() if p.requires_grad], moco._pending))
    (loss0, grads0, keys0), (loss1, grads1, keys1) = results
    torch.testing.assert_close(loss1, loss0)
    for g1, g0 in zip(grads1, grads0):
        torch.testing.assert_close(g1, g0)
    for k1, k0 in zip(keys1, keys0):
        torch.testing.assert_close(k1, k0)


def test_moco_queue_wraps_around():
    moco = MoCo(TinyEncoder(), proj_hidden=32, proj_dim=4, queue_size=10, shuffle_bn=0)
    keys = torch.arange(12.0)[:, None].expand(12, 4)
    moco.queue_ptr.fill_(8)
    moco._enqueue(keys[:4])  # positions 8, 9, 0, 1
    assert int(moco.queue_ptr) == 2
    assert moco.queue[[8, 9, 0, 1], 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    moco._enqueue(keys)  # more keys than slots: the newest 10 survive, key j at slot (2 + j) % 10
    assert int(moco.queue_ptr) == 4
    assert moco.queue[:, 0].tolist() == [8.0, 9.0, 10.0, 11.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_byol_momentum_schedule_and_single_ema_update():
    torch.manual_seed(0)
    byol = BYOL(TinyEncoder(), proj_hidden=32, proj_dim=16, pred_hidden=24, base_momentum=0.9)
    assert byol.momentum_at(0, 100) == pytest.approx(0.9)
    assert byol.momentum_at(50, 100) == pytest.approx(0.95)
    assert byol.momentum_at(100, 100) == pytest.approx(1.0)
    assert byol.momentum_at(25, 100) == pytest.approx(1 - 0.1 * (2 ** -0.5 + 1) / 2)
    opt = torch.optim.SGD([p for p in byol.parameters() if p.requires_grad], lr=0.5)
    target = params(byol.target_encoder) + params(byol.target_projector)
    micro_step(byol, [two_views(seed=0), two_views(seed=1)], opt)
    for new, old in zip(params(byol.target_encoder) + params(byol.target_projector), target):
        torch.testing.assert_close(new, old)  # forward leaves the target alone
    byol.after_step(25, 100)
    tau = byol.momentum_at(25, 100)
    online = params(byol.encoder) + params(byol.projector)
    for new, old, o in zip(params(byol.target_encoder) + params(byol.target_projector), target, online):
        torch.testing.assert_close(new, tau * old + (1 - tau) * o)


def test_swav_prototypes_unit_norm_after_step_and_freeze():
    torch.manual_seed(0)
    _, batch = BUILDERS["swav"]
    swav = SwAV(TinyEncoder(), proj_hidden=32, proj_dim=16, num_prototypes=10, freeze_prototypes_steps=1)
    torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(10))
    opt = torch.optim.SGD(swav.parameters(), lr=5.0)
    with host_reads() as reads:  # the freeze is decided on the device
        micro_step(swav, [batch()], opt)
    assert not reads, reads
    assert swav.prototypes.weight.grad.abs().sum() == 0  # frozen during the first optimizer step
    swav.after_step(1, 10)
    micro_step(swav, [batch()], opt)
    assert swav.prototypes.weight.grad.abs().sum() > 0
    assert not torch.allclose(swav.prototypes.weight.norm(dim=1), torch.ones(10))
    swav.after_step(2, 10)
    torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(10))
    assert int(swav.steps_done) == 2 and "steps_done" in swav.state_dict()


def test_swav_queue_fills_once_per_step_and_then_joins_sinkhorn():
    """queue_size=12 with batches of B=6 and 2 micro-batches per step: every step enqueues 12
    embeddings per global crop, so the queue is full after step 1 and used from step
    queue_start_steps=2 on; its codes are Sinkhorn's over the batch and the queue together."""
    from mmssl.losses import sinkhorn, swav_loss

    _, batch = BUILDERS["swav"]
    torch.manual_seed(0)
    swav = SwAV(TinyEncoder(), proj_hidden=32, proj_dim=16, num_prototypes=10, queue_size=2 * B, queue_start_steps=2)
    opt = torch.optim.SGD(swav.parameters(), lr=0.1)
    b0, b1 = batch(), {"views": [v.flip(0) for v in batch()["views"]]}

    def step(n):
        micro_step(swav, [b0, b1], opt)
        assert len(swav._pending) == 2  # forward only collects; the queue waits for after_step
        # each micro-batch's global-crop embeddings, as the forward computed them: (2, B, 16) each
        expected = torch.cat(swav._pending, dim=1)
        swav.after_step(n, 10)
        return expected

    z = step(1)
    assert int(swav.queue_count) == 2 * B
    torch.testing.assert_close(swav.queue, z)  # newest first, all 2B fit
    torch.testing.assert_close(swav.queue.norm(dim=2), torch.ones(2, 2 * B))
    assert not swav._queue_in_use()  # full, but 1 step < queue_start_steps
    z = step(2)
    torch.testing.assert_close(swav.queue, z)  # step 2's embeddings pushed step 1's out
    assert swav._queue_in_use() and int(swav.queue_count) == 4 * B
    # the loss now equals swav_loss with codes from Sinkhorn over [batch; queue]
    swav.eval()  # no enqueueing, fixed BatchNorm: a deterministic forward to compare against
    out = swav(b0)
    with torch.no_grad():
        views = b0["views"]
        feats = [swav.encoder.pool(swav.encoder.forward_features(torch.cat(views[:2]))),
                 swav.encoder.pool(swav.encoder.forward_features(torch.cat(views[2:])))]
        z = F.normalize(swav.projector(torch.cat(feats)), dim=1)
        scores = list((z @ swav.prototypes.weight.t()).chunk(4))
        queued = swav.queue @ swav.prototypes.weight.t()
        codes = [sinkhorn(torch.cat([scores[i], queued[i]]), swav.eps, swav.sinkhorn_iters)[:B] for i in range(2)]
        torch.testing.assert_close(out["loss"], swav_loss(scores, codes, swav.temperature, 2))
        plain = [sinkhorn(scores[i], swav.eps, swav.sinkhorn_iters) for i in range(2)]
        assert not torch.allclose(out["loss"], swav_loss(scores, plain, swav.temperature, 2))
    # a fresh objective loading the state continues with the queue in use
    fresh = SwAV(TinyEncoder(), proj_hidden=32, proj_dim=16, num_prototypes=10, queue_size=2 * B, queue_start_steps=2)
    assert not fresh._queue_in_use()
    fresh.load_state_dict(swav.state_dict())
    assert fresh._queue_in_use() and torch.equal(fresh.queue, swav.queue)


def test_swav_queue_shifts_newest_first():
    swav = SwAV(TinyEncoder(), proj_hidden=32, proj_dim=4, num_prototypes=10, queue_size=5)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    swav._enqueue(a)
    swav._enqueue(b)
    torch.testing.assert_close(swav.queue, torch.cat([b, a[:, :2]], dim=1))
    swav._enqueue(torch.randn(2, 7, 4))  # more than fits: the first 5 of them
    assert swav.queue.shape == (2, 5, 4)
    with pytest.raises(ValueError, match="queue_size"):
        SwAV(TinyEncoder(), proj_hidden=32, proj_dim=4, queue_size=-1)


def test_rotnet_rotation_layout_and_labels():
    rotnet = RotNet(TinyEncoder())
    x = images(n=3)
    rotated, labels = rotnet.rotate(x)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for r in range(4):
        torch.testing.assert_close(rotated[3 * r: 3 * r + 3], torch.rot90(x, r, dims=(2, 3)))
    # An image turned by 90 degrees first: its rotation r is the original's rotation r + 1.
    turned, _ = rotnet.rotate(torch.rot90(x, 1, dims=(2, 3)))
    for r in range(4):
        torch.testing.assert_close(turned[3 * r: 3 * r + 3], rotated[3 * ((r + 1) % 4): 3 * ((r + 1) % 4) + 3])
    with pytest.raises(ValueError, match="square"):
        rotnet({"input": torch.randn(2, 3, 8, 4)})
    with pytest.raises(ValueError, match="images"):
        rotnet({"input": torch.randn(2, 64)})


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="views"):
        SimCLR(TinyEncoder(), proj_hidden=32, proj_dim=16)({"input": images()})
    with pytest.raises(ValueError, match="2 views"):
        BYOL(TinyEncoder(), proj_hidden=32, proj_dim=16, pred_hidden=24)({"views": [images()] * 3})
    with pytest.raises(ValueError, match="batch size"):
        SimSiam(TinyEncoder(), proj_dim=16, pred_hidden=8)({"views": [images(), images(n=4)]})
    with pytest.raises(ValueError):
        SimCLR(TinyEncoder(), temperature=0)
    with pytest.raises(ValueError):
        MoCo(TinyEncoder(), queue_size=0)
    with pytest.raises(ValueError):
        BYOL(TinyEncoder(), base_momentum=1.5)
    with pytest.raises(ValueError):
        SwAV(TinyEncoder(), num_prototypes=1)
    with pytest.raises(ValueError):
        RotNet(TinyEncoder(), num_classes=3)
    with pytest.raises(ValueError, match="label"):
        SupCon(TinyEncoder(), proj_hidden=32, proj_dim=16)({"views": [images(), images()]})
    with pytest.raises(ValueError):
        BarlowTwins(TinyEncoder(), lambd=-1)
    with pytest.raises(ValueError):
        VICReg(TinyEncoder(), gamma=0)


def test_swav_logs_its_codes_entropy_and_reads_log_k_when_the_embeddings_collapse():
    """target_entropy is the mean entropy of the Sinkhorn codes the loss trains on; when every embedding is
    the same, no prototype is preferred over the batch, the codes go uniform and it reads log K."""
    import math

    from mmssl.losses import sinkhorn

    torch.manual_seed(0)
    swav = SwAV(TinyEncoder(), proj_hidden=32, proj_dim=16, num_prototypes=10)
    batch = BUILDERS["swav"][1]()
    out = swav(batch)
    with torch.no_grad():
        z = F.normalize(swav.projector(torch.cat([swav.encoder.pool(swav.encoder.forward_features(v))
                                                  for v in batch["views"]])), dim=1)
        scores = (z @ swav.prototypes.weight.t()).chunk(len(batch["views"]))
        codes = torch.cat([sinkhorn(s, swav.eps, swav.sinkhorn_iters) for s in scores[:swav.global_crops]])
    torch.testing.assert_close(out["target_entropy"], -torch.special.xlogy(codes, codes).sum(1).mean())
    assert out["target_entropy"] < math.log(10) - 0.01
    last = swav.projector[-1]  # every embedding the same vector: the collapse
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(1.0)
    collapsed = swav(batch)
    assert collapsed["target_entropy"].item() == pytest.approx(math.log(10), abs=1e-5)
