"""``mmssl bench``: the report's fields, one-line errors, and FLOP counts that follow the model.

The figures themselves depend on the machine and its load, so only their presence and signs are checked.
"""
from __future__ import annotations

import itertools
import json
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from mmssl.bench import meters, models, peers
from mmssl.cli import main
from mmssl.errors import MmsslError

CPU = torch.device("cpu")


def test_tiny_mae_image_bench_writes_report(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["bench", "--tasks", "mae_image", "--size", "tiny", "--steps", "1", "--warmup", "0",
                 "--repeats", "1", "--report", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["matmul_peak_flops"] > 0
    row = report["tasks"]["mae_image"]
    assert row["samples_per_s"] > 0
    assert row["flops_per_sample"] > 0
    assert row["peak_memory_mb"] > 0
    assert row["flops_per_s"] > 0 and row["utilisation"] > 0
    if row["ratio"] == peers.NOT_INSTALLED:
        assert row["peer"]["status"] == peers.NOT_INSTALLED
    else:
        assert row["ratio"] > 0 and row["peer"]["samples_per_s"] > 0 and row["peer"]["flops_per_sample"] > 0
    printed = capsys.readouterr().out
    assert "matmul peak" in printed and "mae_image" in printed and str(out) in printed


@pytest.mark.parametrize("args, needle", [
    (["--tasks", "nosuch"], "unknown bench task 'nosuch'"),
    (["--device", "cuda"], "no CUDA device"),
    (["--steps", "0"], "--steps >= 1"),
    (["--tasks", "learning:cpc_audio"], "unknown bench task 'learning:cpc_audio'"),
    (["--tasks", "learning:simclr_image", "--dataset", "/no/such/folder"], "--dataset for the learning rows"),
    (["--tasks", "learning:simclr_image", "--pairs", "0"], "--pairs >= 1"),
    (["--tasks", "learning:simclr_image", "--set", "views.0.crop=pixels"], "views.0.crop is one of"),
])
def test_bad_input_is_one_line(args, needle, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    assert main(["bench", "--size", "tiny", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_mae_step_flops_double_with_the_batch():
    counts = []
    for batch in (4, 8):
        torch.manual_seed(0)
        side, cfg, _ = models.build_ours("mae_image", "tiny", CPU, batch_size=batch)
        step = meters.training_step(side, meters.make_optimizer(side.module, CPU, cfg.lr, cfg.weight_decay), CPU)
        counts.append(meters.count_flops(step))
    assert counts[0] > 0
    assert counts[1] == pytest.approx(2 * counts[0], rel=0.01)


def test_cpu_attention_flops_are_counted():
    """Forward: Q K^T and A V; backward: 5 more products of that size (the scores recomputed): 2BhN^2d each."""
    B, h, N, d = 2, 3, 16, 8
    q, k, v = (torch.randn(B, h, N, d, requires_grad=True) for _ in range(3))
    flops = meters.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert flops == 7 * 2 * B * h * N * N * d


def test_missing_peer_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    out = tmp_path / "r.json"
    assert main(["bench", "--tasks", "mae_image", "--size", "tiny", "--steps", "1", "--warmup", "0",
                 "--repeats", "1", "--report", str(out)]) == 0
    row = json.loads(out.read_text())["tasks"]["mae_image"]
    assert row["ratio"] == peers.NOT_INSTALLED and row["samples_per_s"] > 0


# --- the learning row ------------------------------------------------------------------------------

def _image_folder(root, size=(20, 18), train=24, test=12):
    """train/ and test/ with two classes (reddish and bluish noise), PNG files of ``size``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (*size, 3)) + np.array(colour)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("task, peer, views", [("simclr_image", "PlainSimCLR", 2), ("moco_image", "PlainMoCo", 2),
                                               ("swav_image", "PlainSwAV", 2), ("dino_image", "PlainDINO", 2),
                                               ("split_brain_image", None, 1)])
def test_learning_row_reports_both_curves_at_matched_seconds(task, peer, views, tmp_path, capsys):
    data = _image_folder(tmp_path / "images")
    out = tmp_path / "r.json"
    assert main(["bench", "--tasks", f"learning:{task}", "--size", "tiny", "--seconds", "2", "--points", "3",
                 "--dataset", str(data), "--report", str(out)]) == 0
    row = json.loads(out.read_text())["tasks"][f"learning:{task}"]
    if peer:
        assert row["peer"] == f"plain loop, the same method ({peer})"
    else:  # a task without a plain peer of its own method is measured against plain SimCLR, and says so
        assert row["peer"].startswith("plain loop, SimCLR objective (no plain peer is written for split_brain_image")
    curve = row["curve"]
    assert len(curve) == 3
    seconds = [p["seconds"] for p in curve]
    assert seconds == sorted(seconds) and seconds[0] > 0
    for p in curve:
        assert 0 <= p["mmssl"] <= 1 and 0 <= p["plain"] <= 1
        assert p["plain_at_s"] >= p["seconds"]  # the plain loop is measured once its clock passes the library's point
    assert [p["mmssl_step"] for p in curve] == sorted({p["mmssl_step"] for p in curve})
    assert row["final_ratio"] == pytest.approx(curve[-1]["mmssl"] / curve[-1]["plain"])
    assert row["views"] == views and all(v > 0 for v in row["views_per_s"].values())
    printed = capsys.readouterr().out
    assert f"learning:{task}" in printed and "plain kNN" in printed and "per-item" in printed


@pytest.mark.slow
def test_learning_row_pairs_report_the_means_of_runs_taken_in_turn(tmp_path, capsys):
    data = _image_folder(tmp_path / "images")
    out = tmp_path / "r.json"
    assert main(["bench", "--tasks", "learning:simclr_image", "--size", "tiny", "--seconds", "2", "--points", "2",
                 "--pairs", "2", "--dataset", str(data), "--report", str(out), "--set", "views.0.crop=continuous",
                 "--mixed-precision", "bf16"]) == 0
    row = json.loads(out.read_text())["tasks"]["learning:simclr_image"]
    assert row["overrides"] == ["views.0.crop=continuous"]
    assert row["mixed_precision"] == "bf16"  # the library's runs (below) and the peers' autocast
    pairs = row["pairs"]
    assert len(pairs) == 2 and all(len(q["curve"]) == 2 for q in pairs)
    assert [q["seed"] for q in pairs] == [0, 1]  # pair i trains both sides from seed + i
    for j, point in enumerate(row["curve"]):
        at = [q["curve"][j] for q in pairs]
        assert at[0]["mmssl_step"] == at[1]["mmssl_step"] == point["mmssl_step"]  # the same steps in every pair
        for key in ("seconds", "mmssl", "plain", "plain_at_s"):
            assert point[key] == pytest.approx((at[0][key] + at[1][key]) / 2, abs=1e-3)
    for key in ("mmssl", "plain", "per_item_reference"):
        assert row["views_per_s"][key] == pytest.approx((pairs[0]["views_per_s"][key] + pairs[1]["views_per_s"][key]) / 2,
                                                        abs=0.11)
    assert row["targets"]["curve_at_or_above_plain"] == all(p["mmssl"] >= p["plain"] for p in row["curve"])
    assert row["final_ratio"] == pytest.approx(row["curve"][-1]["mmssl"] / row["curve"][-1]["plain"])
    gaps = [sum(p["mmssl"] - p["plain"] for p in q["curve"]) / 2 for q in pairs]
    assert row["mean_gap"]["per_pair"] == pytest.approx(gaps, abs=1e-4)
    assert row["mean_gap"]["mean"] == pytest.approx(sum(gaps) / 2)
    assert row["mean_gap"]["standard_error"] == pytest.approx(abs(gaps[0] - gaps[1]) / 2)
    printed = capsys.readouterr()
    assert "means of 2 pairs of runs (mmssl, plain, mmssl, plain, ...), seeds 0, 1" in printed.out
    assert "mixed precision bf16 on both sides" in printed.out
    assert len(re.findall(r"process\(es\) on \S+, mixed precision bf16", printed.err)) == 3  # the warm-up run and both of the library's runs


def test_learning_expands_to_every_image_task():
    import mmssl.tasks  # noqa: F401  (fills the registry)
    from mmssl.bench import expand_tasks
    from mmssl.bench.learning import LEARNING_TASKS
    from mmssl.registry import TASKS

    assert expand_tasks(["learning"]) == [f"learning:{t}" for t in LEARNING_TASKS]
    library = [n for n in TASKS if TASKS.get(n).__module__.startswith("mmssl.tasks.")]  # not tests' own tasks
    assert sorted(LEARNING_TASKS) == sorted(n for n in library if TASKS.get(n).modality == "image")


def test_plain_nt_xent_equals_the_library_loss():
    from mmssl.bench.plain_loop import nt_xent as plain
    from mmssl.losses import nt_xent

    torch.manual_seed(0)
    z0, z1 = torch.randn(12, 16, requires_grad=True), torch.randn(12, 16, requires_grad=True)
    ours, theirs = plain(z0, z1, 0.2), nt_xent(z0, z1, 0.2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    g_plain = torch.autograd.grad(ours, (z0, z1))
    g_lib = torch.autograd.grad(nt_xent(z0, z1, 0.2), (z0, z1))
    for a, b in zip(g_plain, g_lib):
        torch.testing.assert_close(a, b)


def _peer_and_objective(name: str, **settings):
    """The plain peer and the library objective of one method, the peer holding the objective's weights."""
    from mmssl.bench import plain_loop
    from mmssl.encoders.io import build_encoder
    from mmssl.registry import OBJECTIVES

    spec = {"name": "convnet", "kwargs": {"widths": [8, 16]}}
    torch.manual_seed(0)
    objective = OBJECTIVES.build(name, encoder=build_encoder(spec), **settings)
    if name == "byol":
        peer = plain_loop.PlainBYOL(spec, settings["proj_hidden"], settings["proj_dim"], settings["pred_hidden"],
                                    settings["base_momentum"], total_steps=10)
        pairs = [(peer.predictor, objective.predictor), (peer.target[0], objective.target_encoder),
                 (peer.target[1], objective.target_projector)]
    elif name == "simsiam":
        peer = plain_loop.PlainSimSiam(spec, settings["proj_dim"], settings["pred_hidden"])
        pairs = [(peer.predictor, objective.predictor)]
    elif name == "moco":
        peer = plain_loop.PlainMoCo(spec, settings["proj_hidden"], settings["proj_dim"], settings["queue_size"],
                                    settings["momentum"], settings["temperature"], settings["symmetric"],
                                    settings["shuffle_bn"])
        pairs = [(peer.key[0], objective.momentum_encoder), (peer.key[1], objective.momentum_projector)]
        peer.queue.copy_(objective.queue)
    elif name == "barlow_twins":
        peer = plain_loop.PlainBarlowTwins(spec, settings["proj_hidden"], settings["proj_dim"], settings["lambd"],
                                           settings["scale_loss"])
        pairs = []
    elif name == "vicreg":
        peer = plain_loop.PlainVICReg(spec, settings["proj_hidden"], settings["proj_dim"], settings["sim_coeff"],
                                      settings["std_coeff"], settings["cov_coeff"], settings["gamma"], settings["eps"])
        pairs = []
    else:
        peer = plain_loop.PlainRotNet(spec)
        pairs = [(peer.head, objective.head)]
    for mine, theirs in [(peer.encoder, objective.encoder), *([(peer.projector, objective.projector)]
                                                              if name != "rotnet" else []), *pairs]:
        mine.load_state_dict(theirs.state_dict())
    return peer, objective


@pytest.mark.parametrize("name, settings", [
    ("byol", {"proj_hidden": 24, "proj_dim": 8, "pred_hidden": 12, "base_momentum": 0.9}),
    ("simsiam", {"proj_dim": 16, "pred_hidden": 4}),
    ("moco", {"proj_hidden": 24, "proj_dim": 8, "queue_size": 20, "momentum": 0.9, "temperature": 0.2,
              "symmetric": True, "shuffle_bn": 0}),
    ("moco", {"proj_hidden": 24, "proj_dim": 8, "queue_size": 20, "momentum": 0.9, "temperature": 0.2,
              "symmetric": False, "shuffle_bn": 0}),
    ("rotnet", {}),
    ("barlow_twins", {"proj_hidden": 24, "proj_dim": 12, "lambd": 0.02, "scale_loss": 0.5}),
    ("vicreg", {"proj_hidden": 24, "proj_dim": 12, "sim_coeff": 25.0, "std_coeff": 20.0, "cov_coeff": 2.0,
                "gamma": 1.0, "eps": 1e-4}),
])
def test_plain_peers_match_the_library_objectives_over_two_steps(name, settings):
    """The bench's plain loops are written apart from the library: with the same weights and views
    their losses, encoder gradients, momentum networks and queues agree with the objectives'."""
    peer, objective = _peer_and_objective(name, **settings)
    peer.train(), objective.train()
    # The batch-standardised methods standardise in two ways (BatchNorm's kernel in the peer, sums in the
    # library), which round apart in float32 by more than the thread count's reordering: compare in float64.
    dtype = torch.float64 if name in ("barlow_twins", "vicreg") else torch.float32
    peer.to(dtype), objective.to(dtype)
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (peer, objective)]
    torch.manual_seed(1)
    for step in (1, 2):
        v0, v1 = torch.randn(2, 6, 3, 16, 16, dtype=dtype)
        batch = {"input": v0} if name == "rotnet" else {"views": [v0, v1]}
        losses = (peer(v0) if name == "rotnet" else peer(v0, v1)), objective(batch)["loss"]
        assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5, abs=1e-6), step
        for opt, loss in zip(opts, losses):
            opt.zero_grad()
            loss.backward()
        for a, b in zip(peer.encoder.parameters(), objective.encoder.parameters()):
            # float32 sums taken in another order (the thread count picks it) differ by a few ulps of
            # the tensor's largest terms, so an element that cancels to near 0 is held to that scale
            atol = max(1e-6, 1e-5 * b.grad.abs().max().item())
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=atol)
        for opt in opts:
            opt.step()
        if hasattr(peer, "after_step"):
            peer.after_step(step)
            objective.after_step(step, 10)
    if name == "byol":
        for a, b in zip(peer.target[0].parameters(), objective.target_encoder.parameters()):
            torch.testing.assert_close(a, b)
    if name == "moco":
        for a, b in zip(peer.key[1].parameters(), objective.momentum_projector.parameters()):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(peer.queue, objective.queue)


def _multicrop_backward(peer, objective, opts, step: int) -> None:
    """One batch of two 16 px and three 8 px crops through a multi-crop peer and its library objective: the
    losses agree, and each side's gradients are computed (its optimizer's zeroed first)."""
    views = [*torch.randn(2, 6, 3, 16, 16), *torch.randn(3, 6, 3, 8, 8)]
    losses = peer(*views), objective({"views": views})["loss"]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5), step
    for opt, loss in zip(opts, losses):
        opt.zero_grad()
        loss.backward()


def test_plain_swav_matches_the_library_objective_over_two_steps():
    """SwAV's plain peer (multi-crop, Sinkhorn written as the paper's Algorithm 1) against the library's
    objective, as the test above: loss, encoder gradients, prototypes after their renormalisation."""
    from mmssl.bench.plain_loop import PlainSwAV
    from mmssl.encoders.io import build_encoder
    from mmssl.registry import OBJECTIVES

    spec = {"name": "convnet", "kwargs": {"widths": [8, 16]}}
    torch.manual_seed(0)
    objective = OBJECTIVES.build("swav", encoder=build_encoder(spec), proj_hidden=24, proj_dim=8, num_prototypes=5,
                                 temperature=0.1, eps=0.05, sinkhorn_iters=3, global_crops=2)
    peer = PlainSwAV(spec, 24, 8, 5, 0.1, 0.05, 3, True, [(16, 0.14, 1.0)] * 2 + [(8, 0.05, 0.14)] * 3, global_crops=2)
    for mine, theirs in ((peer.encoder, objective.encoder), (peer.projector, objective.projector),
                         (peer.prototypes, objective.prototypes)):
        mine.load_state_dict(theirs.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (peer, objective)]
    torch.manual_seed(1)
    for step in (1, 2):
        _multicrop_backward(peer, objective, opts, step)
        for a, b in zip(peer.encoder.parameters(), objective.encoder.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)  # Sinkhorn in exp and in log form
        for opt in opts:
            opt.step()
        peer.after_step(step)
        objective.after_step(step, 10)
        torch.testing.assert_close(peer.prototypes.weight, objective.prototypes.weight)
    with pytest.raises(ValueError, match="largest first"):
        PlainSwAV(spec, 24, 8, 5, 0.1, 0.05, 3, True, [(8, 0.05, 0.14), (16, 0.14, 1.0)], global_crops=1)


@pytest.mark.parametrize("freeze, warmup, centering", [(0, 0, "ema"), (1, 3, "ema"), (0, 3, "sinkhorn")])
def test_plain_dino_matches_the_library_objective_over_two_steps(freeze, warmup, centering):
    """DINO's plain peer (multi-crop, centring, sharpening, EMA teacher) against the library's objective:
    loss, encoder and head gradients, the teacher and the centre after each step; with the last layer
    frozen for the first step and the teacher's temperature warming up over three; with DINOv2's
    Sinkhorn-Knopp centring."""
    from mmssl.bench.plain_loop import PlainDINO
    from mmssl.encoders.io import build_encoder
    from mmssl.registry import OBJECTIVES

    spec = {"name": "convnet", "kwargs": {"widths": [8, 16]}}
    settings = {"out_dim": 10, "hidden_dim": 24, "bottleneck_dim": 8, "nlayers": 3, "use_bn_in_head": False,
                "norm_last_layer": True}
    torch.manual_seed(0)
    objective = OBJECTIVES.build("dino", encoder=build_encoder(spec), **settings, student_temp=0.1, teacher_temp=0.07,
                                 warmup_teacher_temp=0.04, warmup_teacher_temp_steps=warmup, center_momentum=0.9,
                                 momentum_teacher=0.9, freeze_last_layer_steps=freeze, global_crops=2,
                                 centering=centering)
    head = {**{k: v for k, v in settings.items() if k != "use_bn_in_head"}, "use_bn": False}
    peer = PlainDINO(spec, head, (0.1, 0.07, 0.04), warmup, 0.9, 0.9, freeze,
                     [(16, 0.4, 1.0)] * 2 + [(8, 0.05, 0.4)] * 3, global_crops=2, total_steps=10,
                     centering=centering)
    for mine, theirs in ((peer.encoder, objective.encoder), (peer.head, objective.head),
                         (peer.teacher[0], objective.teacher_encoder), (peer.teacher[1], objective.teacher_head)):
        mine.load_state_dict(theirs.state_dict())
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) for m in (peer, objective)]
    torch.manual_seed(1)
    for step in (1, 2):
        _multicrop_backward(peer, objective, opts, step)
        for a, b in zip([*peer.encoder.parameters(), *peer.head.parameters()],
                        [*objective.encoder.parameters(), *objective.head.parameters()]):
            if not b.requires_grad:
                continue
            # a frozen last layer: a zero gradient in the library (kept in DDP's graph), none in the peer
            ga, gb = (torch.zeros_like(b) if g is None else g for g in (a.grad, b.grad))
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=max(1e-6, 1e-5 * gb.abs().max().item()))
        if step <= freeze:
            assert not objective.head.last_v.grad.any()
        for opt in opts:
            opt.step()
        peer.after_step(step)
        objective.after_step(step, 10)
        torch.testing.assert_close(peer.center, objective.center)
        for a, b in zip(peer.teacher.parameters(), [*objective.teacher_encoder.parameters(),
                                                    *objective.teacher_head.parameters()]):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="largest first"):
        PlainDINO(spec, head, (0.1, 0.07, 0.04), 0, 0.9, 0.9, 0, [(8, 0.05, 0.4), (16, 0.4, 1.0)], 1, 10)


def test_per_item_reference_and_batched_views_have_the_task_views_shapes(tmp_path):
    from mmssl.bench.learning import learning_config
    from mmssl.bench.peers import PerItemSimCLRViews
    from mmssl.bench.plain_loop import batch_views, load_images

    data = _image_folder(tmp_path / "images")
    task, cfg = learning_config("simclr_image", "tiny", str(data), tmp_path / "run")
    images = load_images(str(data), "train", cfg.image_size)
    assert images.dtype == torch.uint8 and images.shape == (48, 3, cfg.image_size, cfg.image_size)
    batch = task.on_device(cfg, next(iter(task.train_loader(cfg, 0, 1, 0))))
    library = batch["views"]  # what the objective reads: [v0, v1], each (B, 3, S, S)
    B = cfg.batch_size
    item_views = PerItemSimCLRViews(cfg.image_size, cfg.views[0].min_scale)(images[0], torch.Generator().manual_seed(0))
    assert len(item_views) == len(library) == 2
    for v in item_views:
        assert v.dtype == torch.float32 and v.shape == library[0].shape[1:]
    batched = batch_views(images[:B], cfg.image_size, cfg.views[0].min_scale, torch.Generator().manual_seed(0))
    assert batched.dtype == torch.float32 and batched.shape == library[0].shape
    again = PerItemSimCLRViews(cfg.image_size, cfg.views[0].min_scale)(images[0], torch.Generator().manual_seed(0))
    torch.testing.assert_close(item_views[0], again[0])  # the item's generator alone decides its views


def test_plain_hue_shift_and_blur_equal_torchvision_image_by_image():
    """The peers' batched hue shift and blur, written apart from the library, against torchvision's
    per-image adjust_hue and gaussian_blur (reflected borders, a 3-tap kernel at 32 px)."""
    import torchvision.transforms.v2.functional as TF

    from mmssl.bench.plain_loop import _blur, _hue_shift

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=gen)
    x[0] = x[0, :1]  # a gray image: no hue to turn
    shift = torch.tensor([0.3, -0.5, 0.1, -0.05, 0.5, 0.0])
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    hued, blurred = _hue_shift(x, shift), _blur(x, sigma)
    for i in range(len(x)):
        torch.testing.assert_close(hued[i], TF.adjust_hue(x[i], shift[i].item()), atol=2e-5, rtol=0)
        want = TF.gaussian_blur(x[i], kernel_size=[3, 3], sigma=[sigma[i].item()] * 2)
        torch.testing.assert_close(blurred[i], want, atol=2e-6, rtol=0)
    assert not torch.allclose(hued[1], x[1]) and not torch.allclose(blurred[4], x[4])


def test_plain_views_follow_the_recipe_they_are_given():
    """With the SimCLR recipe the views are what they were before hue, blur and solarization existed
    (the same draws), solarization folds the same views about 0.5, and each peer gets its task's
    recipe view by view (BYOL's two views differ in solarization)."""
    import tempfile
    from pathlib import Path

    from mmssl.bench.learning import learning_config, plain_peer
    from mmssl.bench.peers import MEAN, STD
    from mmssl.bench.plain_loop import SIMCLR_COLOUR, Colour, batch_views

    images = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    def views(colour):
        return batch_views(images, 32, 0.3, torch.Generator().manual_seed(5), colour=colour)

    def unnormalise(v):
        return v * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]

    torch.testing.assert_close(views(SIMCLR_COLOUR), views(Colour(hue=0.0, blur_prob=0.0, solarize_prob=0.0)))
    plain, folded = unnormalise(views(Colour(solarize_prob=1.0))), unnormalise(views(SIMCLR_COLOUR))
    torch.testing.assert_close(plain, torch.minimum(folded, 1 - folded), atol=1e-5, rtol=0)
    inverted = unnormalise(views(Colour(solarize_prob=1.0, solarize_threshold=0.0)))
    torch.testing.assert_close(inverted, 1 - folded, atol=1e-5, rtol=0)
    assert not torch.allclose(views(Colour(hue=0.5)), views(SIMCLR_COLOUR))

    out = Path(tempfile.mkdtemp())
    simclr = learning_config("simclr_image", "default", "demo", out)[1]
    for name in ("byol_image", "vicreg_image", "dino_image", "jigsaw_image"):
        task, cfg = learning_config(name, "default", "demo", out)
        model = plain_peer(name, cfg, simclr, task.encoder_spec(cfg))[0]
        source = simclr if name == "jigsaw_image" else cfg  # a task without a peer of its own: SimCLR's views
        want = [Colour.of(v) for v in source.views for _ in range(v.crops)]
        assert model.view_colours == want and len(want) == model.num_views, name
    byol = learning_config("byol_image", "default", "demo", out)[1]
    first, second = (Colour.of(v) for v in byol.views)
    assert (first.solarize_prob, second.solarize_prob) == (0.0, 0.2)  # BYOL's asymmetric pair (no blur at 32 px)
    # every colour setting of a task's views reaches its peer's recipe (the rest are the crop's and flip's)
    import dataclasses

    from mmssl.modalities.vision.augment import ViewSettings

    crop_fields = {"crops", "size", "min_scale", "max_scale", "flip_prob", "crop"}
    assert {f.name for f in dataclasses.fields(ViewSettings)} - crop_fields == {f.name for f in dataclasses.fields(Colour)}
    moved = learning_config("byol_image", "default", "demo", out, ["views.1.solarize_threshold=0.25"])[1]
    assert Colour.of(moved.views[1]).solarize_threshold == 0.25


@pytest.mark.parametrize("H, W, scale", [(32, 32, (0.08, 1.0)), (24, 40, (0.08, 1.0)), (32, 32, (0.14, 1.0)),
                                         (16, 16, (0.05, 0.14))])
def test_plain_pixel_boxes_draw_as_random_resized_crop(H, W, scale):
    """The peers' torchvision crop, written apart from the library, against torchvision's own
    RandomResizedCrop.get_params over 20,000 draws each: whole-pixel boxes inside the image, and the
    same mean and spread of area and aspect and the same share of whole-image boxes."""
    from torchvision.transforms import RandomResizedCrop

    from mmssl.bench.plain_loop import _pixel_boxes

    n = 20_000
    gen = torch.Generator().manual_seed(0)
    w, h, cx, cy = _pixel_boxes(n, H, W, *scale, lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64))
    pw, ph = w * W, h * H  # sides in pixels
    left, top = (cx + 1) * W / 2 - pw / 2, (cy + 1) * H / 2 - ph / 2
    for x in (pw, ph, left, top):
        torch.testing.assert_close(x, x.round(), atol=1e-9, rtol=0)
    pw, ph, left, top = pw.round(), ph.round(), left.round(), top.round()
    assert (left >= 0).all() and (top >= 0).all() and (left + pw <= W).all() and (top + ph <= H).all()
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, H, W), list(scale), [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float64)  # (top, left, h, w)
    ours = torch.stack([top, left, ph, pw], 1)

    def stats(b):
        area, aspect = b[:, 2] * b[:, 3] / (H * W), (b[:, 3] / b[:, 2]).log()
        whole = ((b[:, 2] == H) & (b[:, 3] == W)).double()
        return torch.stack([area.mean(), area.std(), aspect.mean(), aspect.std(), whole.mean(),
                            (b[:, 1] + b[:, 3] / 2).mean() / W, (b[:, 0] + b[:, 2] / 2).mean() / H])

    torch.testing.assert_close(stats(ours), stats(ref), atol=0.01, rtol=0)


def test_plain_torchvision_crop_of_the_whole_image_resamples_nothing():
    """A box that spans the image maps to the identity grid: the view is the image, or its mirror."""
    from mmssl.bench.peers import MEAN, STD
    from mmssl.bench.plain_loop import batch_views

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    views = batch_views(images, 32, 1.0, torch.Generator().manual_seed(3), colour=None, crop="torchvision")
    views = views * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    x = images.float() / 255
    same = [torch.allclose(v, a, atol=1e-5) for v, a in zip(views, x)]
    mirrored = [torch.allclose(v, a.flip(-1), atol=1e-5) for v, a in zip(views, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    with pytest.raises(ValueError, match="crop is one of"):
        batch_views(images, 32, 0.5, torch.Generator(), crop="pixels")


MULTICROP_CONTINUOUS = "views=[{crops: 2}, {crops: 4, size: 16, min_scale: 0.05, max_scale: 0.4, crop: continuous}]"


def test_peers_crop_as_their_task_and_bench_settings_reach_them(tmp_path):
    """Each peer crops with its task's sampler (torchvision's by default), a stand-in SimCLR peer with
    SimCLR's; a bench override reaches the task's config and, through it, the peer."""
    from mmssl.bench.learning import learning_config, plain_peer

    simclr = learning_config("simclr_image", "default", "demo", tmp_path)[1]
    for name, overrides, want in [("vicreg_image", [], ["torchvision"] * 2),
                                  ("vicreg_image", ["views.0.crop=continuous"], ["continuous"] * 2),
                                  ("dino_image", [MULTICROP_CONTINUOUS], ["torchvision"] * 2 + ["continuous"] * 4),
                                  ("rotnet_image", ["views.0.crop=continuous"], ["continuous"]),
                                  ("jigsaw_image", ["views.0.crop=continuous"], ["torchvision"] * 2)]:
        task, cfg = learning_config(name, "default", "demo", tmp_path, overrides=overrides)
        model = plain_peer(name, cfg, simclr, task.encoder_spec(cfg))[0]
        assert model.crop_samplers == want and len(want) == model.num_views, (name, overrides)


@pytest.mark.parametrize("warmup, cosine_steps", [(0, 40), (5, 40), (5, 0)])
def test_plain_rate_follows_the_library_schedule(warmup, cosine_steps):
    from mmssl.bench.plain_loop import rate
    from mmssl.optim import warmup_cosine

    for step in range(45):
        want = 0.002 if not cosine_steps and step >= warmup else warmup_cosine(step, cosine_steps or 1, 0.002, warmup,
                                                                              0.002 * 0.05)
        if cosine_steps and step >= cosine_steps:
            want = 0.002 * 0.05  # past its last step the plain loop stays at the floor
        assert rate(step, 0.002, warmup, cosine_steps, 0.05) == pytest.approx(want, rel=1e-9, abs=1e-12), step


def _train_tiny_rotnet(**schedule):
    """train_plain on a tiny RotNet and 20 random 16 px images; ``schedule``: when to measure, the rate."""
    from mmssl.bench.plain_loop import PlainRotNet, train_plain

    torch.manual_seed(0)
    model = PlainRotNet({"name": "convnet", "kwargs": {"widths": [4, 8]}})
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    return train_plain(model, images, batch_size=4, lr=1e-3, weight_decay=0.0, size=16, min_scale=0.5, **schedule)


def test_plain_loop_measures_after_the_given_steps():
    seen = []
    out = _train_tiny_rotnet(warmup_steps=2, measure=lambda enc: seen.append(enc.training) or 0.5,
                             at_steps=[3, 1, 7], cosine_steps=7)
    assert [p["step"] for p in out["points"]] == [1, 3, 7] and seen == [False] * 3
    assert out["images"] == 7 * 4 and "seconds" not in out["points"][0]
    with pytest.raises(ValueError, match="either"):
        _train_tiny_rotnet(warmup_steps=2, measure=lambda enc: 0.0, at_steps=[1], at_seconds=[1.0])


def test_plain_rate_on_the_clock_reaches_the_floor_at_the_last_second():
    from mmssl.bench.plain_loop import rate

    assert rate(3, 1.0, 5, progress=0.9) == pytest.approx(0.8)  # still warming up: progress has no say
    assert rate(5, 1.0, 5, min_lr_ratio=0.1, progress=0.0) == pytest.approx(1.0)
    assert rate(9, 1.0, 5, min_lr_ratio=0.1, progress=0.5) == pytest.approx(0.55)
    assert rate(9, 1.0, 5, min_lr_ratio=0.1, progress=1.7) == pytest.approx(0.1)


def test_plain_loop_on_the_clock_spreads_the_cosine_over_its_seconds(monkeypatch):
    from mmssl.bench import plain_loop

    seen = []
    real = plain_loop.rate
    monkeypatch.setattr(plain_loop, "rate", lambda *a: seen.append(a[-1]) or real(*a))
    out = _train_tiny_rotnet(warmup_steps=3, measure=lambda enc: 0.0, at_seconds=[0.5], cosine_seconds=0.5)
    assert seen[:3] == [None] * 3 and seen[3] == 0.0  # the warm-up, then the cosine from its start
    after = seen[3:]  # each step's place is read on the clock before it runs, so the last is below 1
    assert all(b > a for a, b in itertools.pairwise(after)) and 0.5 < after[-1] < 1.0 and out["train_s"] >= 0.5


def test_plain_loop_steps_and_measures_under_the_autocast_it_is_given(monkeypatch):
    # a bf16 learning row: the peer's forward and kNN run at the precision the library trains at
    from mmssl.bench.learning import peer_autocast
    from mmssl.bench.plain_loop import PlainRotNet

    dtypes = []
    real = PlainRotNet.forward

    def forward(self, v):
        out = real(self, v)
        dtypes.append((torch.is_autocast_enabled("cpu"), self.encoder.forward_features(v[:1]).dtype))
        return out

    monkeypatch.setattr(PlainRotNet, "forward", forward)
    measured = []
    mixed = peer_autocast(torch.device("cpu"), "bf16")
    out = _train_tiny_rotnet(warmup_steps=1, measure=lambda enc: measured.append(
        enc.forward_features(torch.zeros(1, 3, 16, 16)).dtype) or 0.5, at_steps=[2], autocast=mixed)
    assert dtypes == [(True, torch.bfloat16)] * 2 and measured == [torch.bfloat16]
    assert torch.isfinite(torch.tensor(out["train_s"]))
    dtypes.clear()
    _train_tiny_rotnet(warmup_steps=1, measure=lambda enc: 0.5, at_steps=[1])
    assert dtypes == [(False, torch.float32)]
    with pytest.raises(MmsslError, match="no or bf16"):
        peer_autocast(torch.device("cpu"), "fp16")


def test_plain_moco_queues_bf16_keys_as_fp32():
    from mmssl.bench.learning import peer_autocast
    from mmssl.bench.plain_loop import PlainMoCo, train_plain

    torch.manual_seed(0)
    model = PlainMoCo({"name": "convnet", "kwargs": {"widths": [4, 8]}}, 16, 8, queue_size=12, momentum=0.9,
                      temperature=0.2, symmetric=True, shuffle_bn=2)
    before = model.queue.clone()
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    train_plain(model, images, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_steps=1, size=16, min_scale=0.5,
                at_steps=[2], measure=lambda enc: 0.5, autocast=peer_autocast(torch.device("cpu"), "bf16"))
    assert model.queue.dtype == torch.float32 and torch.isfinite(model.queue).all()
    assert (model.queue != before).any(dim=1).sum() == 12  # 2 steps x 2 views x 4 keys, wrapped round the 12 rows


def test_the_warm_up_rate_holds_work_a_task_repeats_between_steps(tmp_path):
    # DeepCluster re-clusters every `period` steps; a rate read between two clusterings would leave that
    # out and the learning row would train past its seconds. Here a stand-in repeats 0.4 s of work.
    import time

    from tiny_tasks import TinyCPC, tiny_config

    from mmssl.bench.learning import library_rate

    class Periodic(TinyCPC):
        def before_step(self, cfg, objective, step):
            if step % 4 == 0:
                time.sleep(0.4)

    task, cfg = tiny_config(tmp_path / "run", evaluate=False)
    task = Periodic()
    without = library_rate(task, cfg, tmp_path / "a", 4)
    with_period = library_rate(task, cfg, tmp_path / "b", 4, period=4)
    # the window spans one period (4 steps of 4 samples) and so one 0.4 s pause: at most 16 / 0.4 samples/s
    assert with_period <= 16 / 0.4 < without
