"""DINO (arXiv:2104.14294): the loss against a loop written from the paper's Algorithm 1 (with
multi-crop and the centre) and against lightly's DINOLoss; the teacher and the centre change only in
after_step and the teacher gets no gradient; the schedules and the frozen last layer; DINOv2's
Sinkhorn-Knopp centring against its algorithm written out."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from host_reads import host_reads
from tiny_encoders import TinyEncoder

from mmssl.objectives.dino import DINO, dino_loss, dino_targets, target_monitors

B, K = 6, 10
ROOT = Path(__file__).resolve().parents[2]


def crops(seed=0, local=2):
    """Two global crops (8 px) and ``local`` local ones (4 px) of B images."""
    g = torch.Generator().manual_seed(seed)
    return {"views": [torch.randn(B, 3, 8, 8, generator=g) for _ in range(2)]
            + [torch.randn(B, 3, 4, 4, generator=g) for _ in range(local)]}


def build(**kw):
    torch.manual_seed(0)
    settings = {"out_dim": K, "hidden_dim": 16, "bottleneck_dim": 8, **kw}
    return DINO(TinyEncoder(), **settings)


def reference_loss(student, teacher, center, tps, tpt):
    """Algorithm 1, one scalar at a time: H(t, s) = -sum_k P_t[k] log P_s[k], P_t = softmax((t - C) / tpt),
    P_s = softmax(s / tps), summed over every (teacher crop i, student crop v != i) and every sample,
    then divided by the number of pairs and the batch size (the reference code's average)."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            pairs += 1
            for b in range(len(t)):
                zt = [math.exp((float(t[b, k]) - float(center[k])) / tpt) for k in range(t.shape[1])]
                zs = [math.exp(float(s[b, k]) / tps) for k in range(s.shape[1])]
                total -= sum(zt[k] / sum(zt) * math.log(zs[k] / sum(zs)) for k in range(t.shape[1]))
    return total / (pairs * len(teacher[0]))


def test_loss_matches_algorithm_1_with_multi_crop_and_centre():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(B, K, generator=g) for _ in range(5)]  # 2 global + 3 local crops
    teacher = [torch.randn(B, K, generator=g) for _ in range(2)]
    center = torch.randn(K, generator=g)
    loss = dino_loss(student, teacher, center, 0.1, 0.04)
    assert loss.item() == pytest.approx(reference_loss(student, teacher, center, 0.1, 0.04), rel=1e-5)
    # without multi-crop the pairs are (t1, s2) and (t2, s1): Algorithm 1's H(t1, s2)/2 + H(t2, s1)/2
    two = dino_loss(student[:2], teacher, center, 0.1, 0.04)
    assert two.item() == pytest.approx(reference_loss(student[:2], teacher, center, 0.1, 0.04), rel=1e-5)
    # the centre matters
    assert not torch.isclose(loss, dino_loss(student, teacher, torch.zeros(K), 0.1, 0.04))


WARM_TEMP = 0.04 + 0.03 * 4 / 10  # tau_t after 4 of 10 warm-up steps from 0.04 to 0.07


def warmed_step(**kw):
    """A DINO 4 steps into a 10-step teacher-temperature warm-up, with a random centre, run on one batch:
    (the objective, its output, the student's logits per crop, the teacher's per global crop)."""
    dino = build(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10, **kw)
    dino.center.copy_(torch.randn(K))
    dino.steps_done.fill_(4)
    batch = crops()
    out = dino(batch)
    with torch.no_grad():
        def head(enc, h, x):
            return h(enc.pool(enc.forward_features(x)))
        student = [head(dino.encoder, dino.head, x) for x in batch["views"]]
        teacher = [head(dino.teacher_encoder, dino.teacher_head, x) for x in batch["views"][:2]]
    return dino, out, student, teacher


def test_objective_loss_is_the_loss_of_its_student_and_teacher():
    dino, out, student, teacher = warmed_step()
    expected = reference_loss(student, teacher, dino.center, 0.1, WARM_TEMP)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_lightly_dino_loss_gives_the_same_value():
    lightly_loss = pytest.importorskip("lightly.loss").DINOLoss
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(B, K, generator=g) for _ in range(6)]
    teacher = [torch.randn(B, K, generator=g) for _ in range(2)]
    theirs = lightly_loss(output_dim=K, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
                          student_temp=0.1, center_momentum=0.9)
    center = torch.randn(K, generator=g)
    theirs.center.copy_(center.view_as(theirs.center))
    expected = theirs(teacher, student, teacher_temp=0.04)
    torch.testing.assert_close(dino_loss(student, teacher, center, 0.1, 0.04), expected)
    # and the same centre after one update on these teacher outputs
    ours = build(center_momentum=0.9)
    ours.center.copy_(center)
    ours._pending.append((torch.cat(teacher).sum(0), 2 * B))
    ours.after_step(1, 10)
    torch.testing.assert_close(ours.center, theirs.center.view(K))


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_teacher_and_centre_change_only_in_after_step():
    dino = build(center_momentum=0.8, momentum_teacher=0.9)
    dino.center.copy_(torch.randn(K))
    opt = torch.optim.SGD([p for p in dino.parameters() if p.requires_grad], lr=0.5)
    teacher, center = params(dino.teacher_encoder) + params(dino.teacher_head), dino.center.clone()
    batches = [crops(seed=0), crops(seed=1)]
    with torch.no_grad():  # the teacher's logits before any update, both micro-batches
        logits = torch.cat([dino.teacher_head(torch.cat([dino.teacher_encoder.pool(dino.teacher_encoder.forward_features(
            torch.cat(b["views"][:2])))])) for b in batches])  # (2 * 2B, K)
    opt.zero_grad()
    for batch in batches:  # gradient accumulation: one optimizer step for two micro-batches
        (dino(batch)["loss"] / 2).backward()
    for n, p in dino.named_parameters():
        if n.startswith("teacher_"):
            assert not p.requires_grad and p.grad is None, n
        elif p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert not dino.head.last_g.requires_grad  # norm_last_layer: unit-norm rows, g fixed
    opt.step()
    for new, old in zip(params(dino.teacher_encoder) + params(dino.teacher_head), teacher):
        torch.testing.assert_close(new, old)  # forward and the step leave the teacher alone
    torch.testing.assert_close(dino.center, center)
    with host_reads() as reads:  # the updates stay on the device
        dino.after_step(3, 10)
    assert not reads, reads
    tau = dino.momentum_at(3, 10)
    for new, old, s in zip(params(dino.teacher_encoder) + params(dino.teacher_head), teacher,
                           params(dino.encoder) + params(dino.head)):
        torch.testing.assert_close(new, tau * old + (1 - tau) * s)
    torch.testing.assert_close(dino.center, 0.8 * center + 0.2 * logits.mean(0))
    assert int(dino.steps_done) == 3 and not dino._pending
    dino.after_step(4, 10)  # nothing pending: the centre stays
    torch.testing.assert_close(dino.center, 0.8 * center + 0.2 * logits.mean(0))
    dino.eval()
    dino(crops())  # evaluation forwards do not move the centre
    assert not dino._pending
    assert {"center", "steps_done"} <= set(dino.state_dict())


def test_schedules():
    dino = build(momentum_teacher=0.996, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=30)
    assert dino.momentum_at(0, 100) == pytest.approx(0.996)
    assert dino.momentum_at(50, 100) == pytest.approx(0.998)
    assert dino.momentum_at(100, 100) == pytest.approx(1.0)
    for step, temp in [(0, 0.04), (15, 0.055), (30, 0.07), (90, 0.07)]:
        dino.steps_done.fill_(step)
        assert dino.teacher_temp_now().item() == pytest.approx(temp)
    assert build().teacher_temp_now().item() == pytest.approx(0.04)  # the reference code's constant 0.04


def test_last_layer_frozen_for_the_first_steps_and_unit_norm():
    dino = build(freeze_last_layer_steps=1)
    w = dino.head.last_g * F.normalize(dino.head.last_v, dim=1)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(K))
    with host_reads() as reads:
        dino(crops())["loss"].backward()
    assert not reads, reads
    assert dino.head.last_v.grad.abs().sum() == 0 and dino.head.mlp[0].weight.grad.abs().sum() > 0
    dino.zero_grad()
    dino.after_step(1, 10)
    dino(crops())["loss"].backward()
    assert dino.head.last_v.grad.abs().sum() > 0
    free = build(norm_last_layer=False)
    free(crops())["loss"].backward()
    assert free.head.last_g.requires_grad and free.head.last_g.grad.abs().sum() > 0


def test_bad_settings_are_value_errors():
    for kw in ({"student_temp": 0}, {"out_dim": 0}, {"center_momentum": 1.5}, {"freeze_last_layer_steps": -1},
               {"centering": "mean"}, {"centering": "sinkhorn", "sinkhorn_iters": 0}):
        with pytest.raises(ValueError, match="DINO needs"):
            build(**kw)
    with pytest.raises(ValueError, match="global crops"):
        DINO(TinyEncoder(), out_dim=K, hidden_dim=8, bottleneck_dim=4, global_crops=3)(crops(local=0))


def test_the_task_counts_the_leading_full_size_crops_as_global():
    from mmssl.config import ConfigError
    from mmssl.run import resolve_config
    from mmssl.tasks.dino_image import global_crops

    task, cfg = resolve_config("dino_image", None, {}, [])
    assert global_crops(task.view_settings(cfg), cfg.image_size) == 2  # two crops of 40-100%, both global
    task, cfg = resolve_config("dino_image", str(ROOT / "configs" / "dino_cifar10.yaml"), {}, [])
    # solo-learn's asymmetric pair of 8-100% crops, both global, and no local crops
    assert [(v.crops, v.size, v.min_scale, v.max_scale, v.solarize_prob) for v in task.view_settings(cfg)] == \
        [(1, 32, 0.08, 1.0, 0.0), (1, 32, 0.08, 1.0, 0.2)]
    assert global_crops(task.view_settings(cfg), cfg.image_size) == 2
    assert task.build_objective(cfg).global_crops == 2
    with pytest.raises(ConfigError, match="global crops at image_size"):
        resolve_config("dino_image", None, {}, ["views.0.size=16"])


def test_collapse_monitors_read_the_centred_sharpened_targets():
    objective = build()

    def monitors(teacher_logits):  # what forward logs, from the targets it trains on
        return target_monitors(dino_targets(teacher_logits, objective.center, objective.teacher_temp_now()))

    objective.center.copy_(torch.linspace(-0.5, 0.5, K))
    logits = torch.randn(B, K, generator=torch.Generator().manual_seed(3))
    out = monitors(logits)
    q = F.softmax((logits - objective.center) / objective.teacher_temp_now(), dim=-1)
    row = torch.stack([-torch.special.xlogy(p, p).sum() for p in q]).mean()  # 0 log 0 = 0
    mean = q.mean(0)
    torch.testing.assert_close(out["target_entropy"], row)
    torch.testing.assert_close(out["target_usage"], torch.exp(-torch.special.xlogy(mean, mean).sum()))
    objective.center.zero_()
    # every crop's target on one output: usage 1; equal targets spread over all outputs: entropy log K, usage K
    one = monitors(torch.zeros(B, K).index_fill_(1, torch.tensor([2]), 10.0))
    assert one["target_usage"].item() == pytest.approx(1.0, abs=1e-3) and one["target_entropy"].item() < 1e-3
    flat = monitors(torch.zeros(B, K))
    assert flat["target_entropy"].item() == pytest.approx(math.log(K)) and flat["target_usage"].item() == pytest.approx(K)
    # a balanced split of the crops over 3 outputs, each target sharp: usage 3
    split = torch.zeros(B, K)
    split[torch.arange(B), torch.arange(B) % 3] = 10.0
    assert monitors(split)["target_usage"].item() == pytest.approx(3.0, abs=1e-3)
    assert {"target_entropy", "target_usage"} <= set(objective(crops()))


def sinkhorn_knopp_reference(logits, temp, iters):
    """DINOv2's teacher centring (arXiv:2304.07193, Sec. 4), as its reference code runs it, in float64:
    Q = exp(t / tau_t) transposed to (K, B); Q /= its total; then ``iters`` times: each output's row
    scaled to total 1/K, each crop's column to total 1/B; finally Q * B, transposed back."""
    q = torch.exp(logits.double() / temp).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_sinkhorn_centring_matches_dinov2s_algorithm():
    dino, out, student, teacher = warmed_step(centering="sinkhorn")  # the random centre is not read
    temp = WARM_TEMP
    teacher = torch.cat(teacher)
    targets = sinkhorn_knopp_reference(teacher, temp, 3)
    # every crop's target sums to 1, and the outputs' shares of the batch are far nearer equal than the
    # plain sharpened softmax's (three rounds do not reach the exact equipartition)
    torch.testing.assert_close(targets.sum(1), torch.ones(2 * B, dtype=torch.float64))
    share = 2 * B / K
    plain = F.softmax(teacher.double() / temp, dim=1).sum(0)
    assert (targets.sum(0) - share).abs().max() < 0.5 * (plain - share).abs().max()
    expected = 0.0
    pairs = [(i, v) for i in range(2) for v in range(len(student)) if v != i]
    for i, v in pairs:
        log_p = F.log_softmax(student[v].double() / 0.1, dim=1)
        expected -= (targets[i * B:(i + 1) * B] * log_p).sum(1).mean().item() / len(pairs)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["target_usage"].item() > 0.95 * K  # near equipartition: the usage reads about K
    # the moving-average centre is neither read nor moved
    center = dino.center.clone()
    assert not dino._pending
    dino.after_step(5, 10)
    torch.testing.assert_close(dino.center, center)
    assert warmed_step()[1]["loss"].item() != pytest.approx(out["loss"].item(), rel=1e-3)  # the centre's
