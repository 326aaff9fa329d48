import itertools
import json

import pytest
import torch
from host_reads import host_reads
from safetensors.torch import load_file
from tiny_tasks import Interrupted, TinyCPC, tiny_config

from mmssl import load_encoder
from mmssl.errors import TrainingError
from mmssl.run import run_training
from mmssl.trainer import latest_checkpoint, lr_at, train


def weights(run):
    return load_file(str(run / "encoder" / "model.safetensors"))


def test_lr_schedule_is_warmup_then_cosine():
    _, cfg = tiny_config("x", lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))  # decreasing after warmup
    assert lr_at(14, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(0.55)


def test_a_run_called_from_python_with_a_home_relative_output_dir_writes_there(tmp_path, monkeypatch):
    # train() and run_training() expand "~" themselves, so a caller that skips resolve_config gets every
    # output (checkpoints, metrics, encoder) in one folder rather than some under a literal ./~
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    task, cfg = tiny_config("~/run", max_steps=2, save_every=2, evaluate=False)
    run_training(task, cfg)
    run = tmp_path / "home" / "run"
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file() and (run / "encoder").is_dir()
    assert list((tmp_path / "cwd").iterdir()) == []


def test_run_writes_outputs_and_rerun_resumes(tmp_path):
    task, cfg = tiny_config(tmp_path / "run")
    report = run_training(task, cfg)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "eval.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(r["loss"])) and "acc" in r and "lr" in r for r in rows)
    assert rows[0]["lr"] == pytest.approx(cfg.lr / 2)
    assert report["embed_dim"] == 16
    # keep_checkpoints=2: only the newest two remain
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
    enc = load_encoder(run)
    assert enc.forward_features(torch.randn(2, 1600)).shape == (2, 10, 16)
    # the same command again finds the finished run and does not train further
    before = weights(run)
    run_training(task, cfg)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
    for k, v in weights(run).items():
        assert torch.equal(v, before[k])


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    task, cfg = tiny_config(tmp_path / "straight", max_steps=8, save_every=3)
    run_training(task, cfg)
    straight = weights(tmp_path / "straight")

    task, cfg = tiny_config(tmp_path / "resumed", max_steps=8, save_every=3)
    TinyCPC.crash_after = 5  # dies during step 6, after the checkpoint of step 3
    try:
        with pytest.raises(Interrupted):
            run_training(task, cfg)
    finally:
        TinyCPC.crash_after = None
    assert latest_checkpoint(tmp_path / "resumed").name == "step_0000003"
    run_training(task, cfg)
    resumed = weights(tmp_path / "resumed")
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-6, msg=k)
    # and the data really moved on: a run from scratch with fewer steps differs
    task, cfg = tiny_config(tmp_path / "short", max_steps=3, save_every=3)
    run_training(task, cfg)
    assert any(not torch.allclose(weights(tmp_path / "short")[k], v) for k, v in straight.items())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    task, cfg = tiny_config(tmp_path / "nan", max_steps=8, save_every=2)
    TinyCPC.nan_batch = 4  # global batch 4 is step 5
    try:
        with pytest.raises(TrainingError, match="non-finite loss or gradient at step 5.*step_0000004"):
            train(task, cfg)
    finally:
        TinyCPC.nan_batch = None
    ckpt = latest_checkpoint(tmp_path / "nan")
    assert ckpt.name == "step_0000004"
    state = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_non_finite_flag_is_read_at_the_next_log_or_save_step_only(tmp_path):
    """With logging every 8 steps and saving every 3, a NaN at step 5 is reported at step 6, before
    the checkpoint of step 6 is written; nothing of steps 5 and 6 reaches the log."""
    task, cfg = tiny_config(tmp_path / "nan", max_steps=9, save_every=3, log_every=8)
    TinyCPC.nan_batch = 4
    try:
        with pytest.raises(TrainingError, match="at step 5; stopped at step 6 .*step_0000003"):
            train(task, cfg)
    finally:
        TinyCPC.nan_batch = None
    assert latest_checkpoint(tmp_path / "nan").name == "step_0000003"
    assert not (tmp_path / "nan" / "metrics.jsonl").exists() or not (tmp_path / "nan" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("name, state_key", [("adamw", "exp_avg"), ("sgd", "momentum_buffer"), ("lars", "momentum_buffer")])
def test_optimizer_skips_a_flagged_step_on_the_device(name, state_key):
    from accelerate import Accelerator

    from mmssl.optim import make_optimizer
    from mmssl.trainer import _FiniteGuard

    layer = torch.nn.Linear(3, 2)
    opt = make_optimizer(list(layer.parameters()), torch.device("cpu"), 0.1, 0.01, name)
    guard = _FiniteGuard(Accelerator(cpu=True), opt, list(layer.parameters()), None)
    assert guard.skips

    def step(n, x):
        loss = layer(x).sum()
        loss.backward()
        guard.observe(n, loss, None)
        with guard.skip_if_bad():
            opt.step()
        opt.zero_grad()

    step(1, torch.ones(4, 3))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    moments = [opt.state[p][state_key].clone() for p in layer.parameters()]
    step(2, torch.full((4, 3), float("nan")))
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # no update, no weight decay
    assert all(torch.equal(opt.state[p][state_key], m) for p, m in zip(layer.parameters(), moments))
    if name == "adamw":
        assert all(opt.state[p]["step"] == 1 for p in layer.parameters())
    step(3, torch.ones(4, 3))  # a later good step updates again, and the first bad step is remembered
    assert not torch.equal(layer.weight, before["weight"]) and int(guard.first_bad) == 2


def test_the_log_holds_the_gradient_norm_before_clipping_whether_or_not_it_clips(tmp_path):
    def norms(clip):
        task, cfg = tiny_config(tmp_path / f"clip{clip}", max_steps=4, save_every=4, evaluate=False, clip_grad=clip)
        train(task, cfg)
        return [json.loads(line)["grad_norm"] for line in (tmp_path / f"clip{clip}" / "metrics.jsonl").read_text().splitlines()]

    off, never, tight = norms(0.0), norms(1e6), norms(1e-3)
    assert len(off) == 4 and all(0 < n < float("inf") for n in off)
    assert never == pytest.approx(off, rel=1e-5)  # the clipping path and the guard's own norm agree
    # the first step's gradient precedes any update: clipping at 1e-3 logs it uncut, then trains otherwise
    assert tight[0] == pytest.approx(off[0], rel=1e-5) and tight[0] > 1e-3 and tight[1:] != pytest.approx(off[1:])


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_training_steps_make_no_host_syncs(tmp_path, optimizer):
    """Library code reads tensors on the host (item, bool, int, float, tolist) at log, monitor and
    save steps only: 4 and 8 steps that log and save once make the same number of reads."""
    counts = []
    for steps in (4, 8):
        task, cfg = tiny_config(tmp_path / f"run{steps}", max_steps=steps, save_every=steps, log_every=steps,
                                monitor_every=0, optimizer=optimizer)
        with host_reads() as calls:
            train(task, cfg)
        counts.append(calls)
    assert len(counts[0]) == len(counts[1]), counts


def test_changed_config_in_same_output_dir_is_refused(tmp_path):
    from mmssl.config import ConfigError

    task, cfg = tiny_config(tmp_path / "run", max_steps=2)
    run_training(task, cfg)
    task, cfg = tiny_config(tmp_path / "run", max_steps=2, lr=0.5)
    with pytest.raises(ConfigError, match="lr"):
        run_training(task, cfg)


def test_queue_and_ema_updates_happen_once_per_optimizer_step_under_accumulation(tmp_path, monkeypatch):
    """grad_accum=3: MoCo enqueues the keys of all three micro-batches and updates its momentum
    encoder once per optimizer step, not once per forward."""
    from mmssl.objectives.moco import MoCo
    from mmssl.run import resolve_config

    calls = []
    original = MoCo.after_step
    monkeypatch.setattr(MoCo, "after_step", lambda self, step, total: (calls.append(step), original(self, step, total)))
    task, cfg = resolve_config("moco_image", None, {"output_dir": str(tmp_path / "moco"), "max_steps": 2},
                               ["batch_size=2", "grad_accum=3", "num_workers=0", "evaluate=false", "image_size=16",
                                "encoder.vit.dim=16", "encoder.vit.depth=1", "encoder.vit.heads=2", "objective.proj_hidden=8",
                                "objective.proj_dim=8", "objective.queue_size=64", "monitor_every=0",
                                "objective.symmetric=true"])
    objective, _ = train(task, cfg)
    assert calls == [1, 2]
    # 2 steps x 3 micro-batches x 2 images x 2 views (symmetric: both views are keys once)
    assert int(objective.queue_ptr) == 24


def test_compile_gives_the_eager_losses(tmp_path):
    """train with compile=true runs the objective under torch.compile: the first steps' losses
    match eager training from the same seed (same maths, fused kernels may round differently)."""
    losses = {}
    for mode in (False, True):
        task, cfg = tiny_config(tmp_path / f"compile_{mode}", max_steps=3, compile=mode)
        train(task, cfg)
        rows = [json.loads(line) for line in (tmp_path / f"compile_{mode}" / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [r["loss"] for r in rows]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_views_in_the_workers_train_as_views_on_the_device(tmp_path):
    """view_placement only moves where on_device runs: the same losses step by step, the same weights."""
    from mmssl.run import resolve_config

    runs = {}
    for placement in ("device", "workers"):
        task, cfg = resolve_config("simclr_image", None, {"output_dir": str(tmp_path / placement), "max_steps": 4},
                                   ["num_workers=2", "batch_size=8", "encoder.convnet.widths=8,8,8,8", "log_every=1",
                                    "save_every=4", "monitor_every=0", "evaluate=false", f"view_placement={placement}"])
        run_training(task, cfg)
        rows = [json.loads(line) for line in (tmp_path / placement / "metrics.jsonl").read_text().splitlines()]
        runs[placement] = ([r["loss"] for r in rows if "loss" in r], weights(tmp_path / placement))
    assert len(runs["device"][0]) == 4
    torch.testing.assert_close(runs["workers"][0], runs["device"][0], rtol=1e-4, atol=1e-5)
    for k, v in runs["device"][1].items():
        torch.testing.assert_close(runs["workers"][1][k], v, rtol=1e-4, atol=1e-5)


def test_an_unknown_view_placement_is_one_config_error_before_anything_is_written(tmp_path):
    from mmssl.config import ConfigError

    task, cfg = tiny_config(tmp_path / "run", view_placement="gpu")
    with pytest.raises(ConfigError, match="view_placement must be auto, device or workers, not 'gpu'"):
        run_training(task, cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()
