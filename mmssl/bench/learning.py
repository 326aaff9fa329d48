"""The learning-efficiency row of ``mmssl bench``: kNN top-1 against training seconds, for an image
task trained by the library and for a plain loop (``plain_loop.py``) on the same network and data.

(a) The library: ``mmssl.run.run_training`` at the task's defaults, with ``max_steps`` set from the
    images/s of a short warm-up run so that training lasts about ``seconds``, the online monitor
    (kNN at k = 20 on the task's labelled splits, ``monitor_items`` of each) at ``points`` evenly
    spaced steps, and a checkpoint only at the end. The times come from ``DIR/metrics.jsonl``.
(b) The plain loop, the peer: the task's method written out in ``plain_loop.py`` with the task's
    objective settings (SimCLR, BYOL, SimSiam, MoCo, SwAV, RotNet, Barlow Twins, VICReg and DINO;
    SimCLR's objective for the other image tasks, which have no plain peer of their own, and the row
    says so: it then compares methods as well as pipelines), the encoder built from
    the task's encoder spec, the task's batch size, lr, weight decay, crop scale and sampler and each view's colour,
    blur and solarization recipe (SimCLR's views for a SimCLR stand-in), measured by the
    same ``task.monitor`` when its training clock first passes each of (a)'s points, and stopped after
    the last. Its rate has (a)'s shape over the same seconds: the task's warm-up steps, then half a
    cosine down to ``min_lr_ratio * lr`` at (a)'s last point (a run that stops by the clock cannot
    count its steps ahead, so the cosine runs over training seconds).
(c) A reference: SimCLR's per-item torchvision views in DataLoader workers (``peers.py``) feeding
    the peer's training step where the peer reads two views (SimCLR, BYOL, SimSiam, MoCo, Barlow
    Twins, VICReg), else a plain SimCLR model's; images/s only.

Precision: the library trains at ``mixed_precision`` (accelerate's, fp32 by default), and (b) and (c)
run their training steps and kNN under the same autocast, so a row compares pipelines at one precision
(bf16 autocast speeds the demo conv net's step on a CPU with native bf16, e.g. AVX512-BF16).

The clock is paused while kNN is measured, in both: (a)'s monitor time is its monitor row's
``wall_s`` less the log row's of the same step, taken out of every later time. Start-up (building
the model, opening the data, and decoding the training set into memory where it fits in the task's
``in_memory_mib``, as (b) holds its images) is outside both clocks. Where (a) decodes in DataLoader
workers instead, its first batches, which wait for the workers to start, are inside it, and its
workers keep prefetching while it measures.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import torch
from torch import nn

from mmssl.bench.peers import PerItemDataset, PerItemSimCLRViews
from mmssl.bench.plain_loop import (
    Colour,
    PlainBarlowTwins,
    PlainBYOL,
    PlainDINO,
    PlainMoCo,
    PlainRotNet,
    PlainSimCLR,
    PlainSimSiam,
    PlainSwAV,
    PlainVICReg,
    load_images,
    train_plain,
)
from mmssl.encoders.io import build_encoder
from mmssl.errors import MmsslError

# every image task: those with a plain peer of their own method first, then those measured against plain SimCLR
PEERED_TASKS = ("simclr_image", "byol_image", "moco_image", "simsiam_image", "swav_image", "rotnet_image",
                "barlow_twins_image", "vicreg_image", "dino_image")
LEARNING_TASKS = (*PEERED_TASKS, "mae_image", "supcon_image", "exemplar_image", "deepcluster_image", "densecl_image",
                  "jigsaw_image", "relative_position_image", "context_encoder_image", "split_brain_image", "cpc_image")
# --size tiny (tests): a small network and batch on any dataset; other sizes keep the task's defaults
_TINY_RUN = {"batch_size": 16, "monitor_items": 200, "warmup_steps": 2, "num_workers": 0}
TINY = {**_TINY_RUN, "encoder.name": "convnet", "encoder.convnet.widths": "8,16,16,32"}
TINY_MAE = {**_TINY_RUN, "encoder.vit.dim": 32, "encoder.vit.depth": 1, "encoder.vit.heads": 2,
            "objective.decoder_dim": 16, "objective.decoder_depth": 1, "objective.decoder_heads": 2}
RATE_STEPS = {"tiny": 8, "small": 20, "full": 20}  # steps of the warm-up run that estimates the library's images/s
PERIOD_CAP = 1000  # longest recurring-work period (in steps) that the warm-up run spans twice


def plain_peer(task_name: str, cfg: Any, simclr: Any, spec: dict) -> tuple[nn.Module, float, str]:
    """(the plain loop's model for ``task_name`` at ``cfg``'s objective settings, its crop min_scale, the
    peer's name for the row). ``simclr``: simclr_image's config, for the tasks without a plain peer."""
    o = cfg.objective
    if task_name == "byol_image":
        model = PlainBYOL(spec, o.proj_hidden, o.proj_dim, o.pred_hidden, o.base_momentum, cfg.max_steps)
    elif task_name == "simsiam_image":
        model = PlainSimSiam(spec, o.proj_dim, o.pred_hidden)
    elif task_name == "moco_image":
        if o.final_momentum is not None:
            raise MmsslError("the plain MoCo peer keeps the key momentum constant; drop objective.final_momentum")
        model = PlainMoCo(spec, o.proj_hidden, o.proj_dim, o.queue_size, o.momentum, o.temperature, o.symmetric,
                          o.shuffle_bn)
    elif task_name == "swav_image":
        if o.queue_size or o.freeze_prototypes_steps:
            raise MmsslError("the plain SwAV peer has no queue and never freezes its prototypes; "
                             "drop objective.queue_size and objective.freeze_prototypes_steps")
        model = PlainSwAV(spec, o.proj_hidden, o.proj_dim, o.num_prototypes, o.temperature, o.eps,
                          o.sinkhorn_iters, o.projector_bn, task_crops(cfg), global_crops=cfg.views[0].crops)
    elif task_name == "rotnet_image":
        model = PlainRotNet(spec)
    elif task_name == "dino_image":
        from mmssl.modalities.vision.augment import sized_views
        from mmssl.tasks.dino_image import global_crops

        teacher_crops = global_crops(sized_views(cfg.views, cfg.image_size), cfg.image_size)
        model = PlainDINO(spec, {"out_dim": o.out_dim, "hidden_dim": o.hidden_dim, "bottleneck_dim": o.bottleneck_dim,
                                 "nlayers": o.nlayers, "use_bn": o.use_bn_in_head, "norm_last_layer": o.norm_last_layer},
                          (o.student_temp, o.teacher_temp, o.warmup_teacher_temp), o.warmup_teacher_temp_steps,
                          o.center_momentum, o.momentum_teacher, o.freeze_last_layer_steps, task_crops(cfg),
                          teacher_crops, cfg.max_steps, centering=o.centering, sinkhorn_iters=o.sinkhorn_iters)
    elif task_name == "barlow_twins_image":
        model = PlainBarlowTwins(spec, o.proj_hidden, o.proj_dim, o.lambd, o.scale_loss)
    elif task_name == "vicreg_image":
        model = PlainVICReg(spec, o.proj_hidden, o.proj_dim, o.sim_coeff, o.std_coeff, o.cov_coeff, o.gamma, o.eps)
    else:
        s = simclr.objective
        model = PlainSimCLR(spec, s.proj_hidden, s.proj_dim, s.temperature)
        if task_name != "simclr_image":
            model.view_colours, model.crop_samplers = task_colours(simclr), task_samplers(simclr)
            return model, simclr.views[0].min_scale, ("plain loop, SimCLR objective (no plain peer is written for "
                                                      f"{task_name}: the row compares methods as well as pipelines)")
    if model.colour:
        model.view_colours = task_colours(cfg)
    model.crop_samplers = task_samplers(cfg)
    return model, cfg.views[0].min_scale, f"plain loop, the same method ({model.__class__.__name__})"


def task_crops(cfg: Any) -> list[tuple[int, float, float]]:
    """The (size, min_scale, max_scale) of each view a task's config makes, in order (a group of N crops gives N)."""
    return [(v.size or cfg.image_size, v.min_scale, v.max_scale) for v in cfg.views for _ in range(v.crops)]


def task_colours(cfg: Any) -> list[Colour]:
    """The colour recipe of each view a task's config makes, in order (a group of N crops gives N)."""
    return [Colour.of(v) for v in cfg.views for _ in range(v.crops)]


def task_samplers(cfg: Any) -> list[str]:
    """The crop sampler (``views.N.crop``) of each view a task's config makes, in order."""
    return [v.crop for v in cfg.views for _ in range(v.crops)]


def learning_config(task_name: str, size: str, dataset: str, out_dir: Path, overrides: list[str] | None = None,
                    **flags: Any) -> tuple[Any, Any]:
    """The task at its defaults on ``dataset`` (labels read from class folders unless demo), writing to
    out_dir, with ``overrides`` (KEY=VALUE) after the defaults."""
    from mmssl.run import resolve_config

    base = {"dataset": dataset, "output_dir": str(out_dir), "evaluate": False}
    if dataset != "demo":
        base["label_column"] = "label"
    if size == "tiny":
        base.update(TINY_MAE if task_name == "mae_image" else TINY)
    return resolve_config(task_name, None, {**base, **flags}, list(overrides or []))


def quietly(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with what it prints sent to stderr, beside the bench's own progress lines."""
    with contextlib.redirect_stdout(sys.stderr):
        return fn()


def metric_rows(out_dir: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in order."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def count_views(task: Any, cfg: Any) -> int:
    """Images the objective reads per item: the 4-D tensors of one batch through ``task.on_device``."""
    batch = next(iter(task.train_loader(dataclasses.replace(cfg, num_workers=0), 0, 1, 0)))
    with torch.no_grad():
        batch = task.on_device(cfg, batch)
    tensors = [t for v in batch.values() for t in (v if isinstance(v, (list, tuple)) else [v])
               if isinstance(t, torch.Tensor) and t.ndim == 4]
    return max(1, round(sum(len(t) for t in tensors) / cfg.batch_size))


PRECISIONS = {"no": None, "bf16": torch.bfloat16}  # the learning rows' mixed precision -> the peers' autocast dtype


def peer_autocast(device: torch.device, mixed_precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A context for (b)'s and (c)'s forward passes and kNN at ``mixed_precision``, as accelerate runs (a)'s."""
    if mixed_precision not in PRECISIONS:
        raise MmsslError(f"the learning rows train at mixed precision no or bf16, not '{mixed_precision}'")
    dtype = PRECISIONS[mixed_precision]
    return contextlib.nullcontext if dtype is None else (lambda: torch.autocast(device.type, dtype=dtype))


def library_curve(task: Any, cfg: Any, mixed_precision: str = "no") -> dict:
    """Train through ``run_training``; the kNN points with their training seconds (monitor time removed)."""
    from mmssl.run import run_training

    quietly(lambda: run_training(task, cfg, mixed_precision))
    rows = metric_rows(Path(cfg.output_dir))
    logged = {r["step"]: r["wall_s"] for r in rows if "loss" in r}
    points, paused = [], 0.0
    for r in (r for r in rows if "monitor/knn_top1" in r):
        before = logged[r["step"]]  # the log row of the same step is written just before the monitor runs
        points.append({"seconds": round(before - paused, 3), "knn_top1": r["monitor/knn_top1"], "step": r["step"],
                       "images": r["samples"]})
        paused += r["wall_s"] - before
    if not points:
        raise MmsslError(f"{task.name} logged no kNN monitor rows; the learning row needs labelled data")
    return {"points": points, "train_s": points[-1]["seconds"], "images": points[-1]["images"], "monitor_s": paused}


def objective_stepper(objective: nn.Module, cfg: Any) -> Callable[[dict], None]:
    """A training step of ``objective`` on a batch of views made beforehand, without the trainer:
    forward, backward, AdamW at ``cfg.lr``, and the objective's ``after_step`` (targets, queues)."""
    opt = torch.optim.AdamW([q for q in objective.parameters() if q.requires_grad], lr=cfg.lr)

    def step(batch: dict) -> None:
        loss = objective(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_step(1, cfg.max_steps)

    return step


def library_rate(task: Any, cfg: Any, out_dir: Path, steps: int, mixed_precision: str = "no", period: int = 0) -> float:
    """Images/s of a short run of the library (the first logged steps, which start the workers, left out).
    ``period``: steps between recurring work outside the training step (``Task.before_step_period``);
    the rate is then read over whole periods, each holding that work once."""
    from mmssl.run import run_training

    if period:
        every = period * math.ceil(steps / period)
        steps = 2 * every
    else:
        every = max(1, steps // 4)
    warm = dataclasses.replace(cfg, output_dir=str(out_dir), max_steps=steps, monitor_every=0, log_every=every,
                               save_every=steps)
    quietly(lambda: run_training(task, warm, mixed_precision))
    rows = [r for r in metric_rows(out_dir) if "loss" in r]
    first, last = rows[0], rows[-1]
    return (last["samples"] - first["samples"]) / max(1e-6, last["wall_s"] - first["wall_s"])


def reference_rate(model: torch.nn.Module, images: torch.Tensor, cfg: Any, views: PerItemSimCLRViews,
                   seconds: float, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                   ) -> float:
    """Images/s of per-item views made in ``cfg.num_workers`` DataLoader workers feeding ``model``'s
    training steps (forward under ``autocast``), for about ``seconds`` after the first two batches (worker start-up)."""
    loader = torch.utils.data.DataLoader(PerItemDataset(images, views, cfg.seed), batch_size=cfg.batch_size,
                                         shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    seen, steps, start = 0, 0, None
    while start is None or time.perf_counter() - start < seconds:
        for v0, v1 in loader:
            with autocast():
                loss = model(v0.to(dev), v1.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if hasattr(model, "after_step"):  # momentum encoders and queues, as in the peer's own loop
                model.after_step(steps)
            if start is None and steps == 2:
                start = time.perf_counter()
            elif start is not None:
                seen += len(v0)
                if time.perf_counter() - start >= seconds:
                    break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return seen / (time.perf_counter() - start)


def bench_learning(task_name: str, size: str, seconds: float, dataset: str = "demo", points: int = 6,
                   log: Callable[[str], None] = print, pairs: int = 1, overrides: list[str] | None = None,
                   mixed_precision: str = "no") -> dict:
    """(a), (b) and (c) of the module docstring for one image task; a JSON-able row.

    ``pairs`` > 1 runs (a), (b) and (c) that many times in turn (a, b, c, a, b, c, ...) with the same
    steps, so that a drift in the machine's speed reaches both sides alike; pair i trains both sides
    from seed ``cfg.seed + i`` (weights, data order, views), because a few hundred steps from one seed
    differ from another's by more than the two sides do (RotNet's first point: docs/results/image.md).
    The row's figures are the means over the pairs, each pair's kept beside them with its seed, and the
    curve target is read on the means. ``overrides`` (KEY=VALUE) set the task's config, which the peer
    reads its settings from (its objective, views and crop sampler); a stand-in SimCLR peer keeps
    SimCLR's defaults. ``mixed_precision`` (no or bf16): the library's, and the peers' autocast.
    """
    if pairs < 1:
        raise MmsslError(f"need pairs >= 1, not {pairs}")
    autocast = peer_autocast(train_device(), mixed_precision)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task, cfg = learning_config(task_name, size, dataset, tmp / "run", overrides=overrides)
        simclr = learning_config("simclr_image", size, dataset, tmp / "unused")[1]  # the peer's objective settings
        objective = task.build_objective(cfg)
        spec = objective.export_encoder().spec
        # A rate over fewer steps than the task's recurring work (DeepCluster's re-clustering) would
        # leave it out, and the row would train past its seconds; up to PERIOD_CAP steps it is read in.
        recurring = task.before_step_period(cfg, objective)
        period = recurring if recurring <= PERIOD_CAP else 0
        del objective
        torch.manual_seed(cfg.seed)
        floor = build_encoder(spec)
        with torch.no_grad():
            random_knn = task.monitor(cfg, floor.eval()).get("knn_top1")  # also opens and checks the data
        if random_knn is None:
            raise MmsslError(f"the learning row needs labelled data: {dataset} has no labels to measure kNN on")
        views = count_views(task, cfg)
        images = load_images(dataset, cfg.split, cfg.image_size)  # the plain loop's data, (N, 3, S, S) uint8
        if len(images) < cfg.batch_size:
            raise MmsslError(f"{dataset}: {len(images)} training images, fewer than one batch of {cfg.batch_size}")
        rate = library_rate(task, cfg, tmp / "rate", RATE_STEPS[size], mixed_precision, period)
        steps = max(points, round(seconds * rate / cfg.batch_size))
        every = math.ceil(steps / points)
        cfg = dataclasses.replace(cfg, max_steps=every * points, monitor_every=every, log_every=every,
                                  save_every=every * points)
        log(f"learning:{task_name}: {rate:.0f} images/s in a warm-up run -> {cfg.max_steps} steps of "
            f"{cfg.batch_size}, kNN every {every}" + (f", {pairs} pairs of runs" if pairs > 1 else "")
            + (f", mixed precision {mixed_precision}" if mixed_precision != "no" else "")
            + (f"; the rate includes the work it repeats every {period} steps" if period else "")
            + (f"; the rate leaves out the work it repeats every {recurring} steps (over {PERIOD_CAP}), so the "
               f"row trains longer than {seconds:.0f} s" if recurring and not period else ""))
        dev = train_device()
        images = images.to(dev)
        runs = []
        for i in range(pairs):
            seed = cfg.seed + i
            ours = library_curve(task, dataclasses.replace(cfg, output_dir=str(tmp / f"run{i}"), seed=seed),
                                 mixed_precision)
            log(f"  mmssl, seed {seed}: {ours['train_s']:.0f} s of training, kNN {100 * ours['points'][-1]['knn_top1']:.1f}")
            torch.manual_seed(seed)
            model, min_scale, peer = plain_peer(task_name, cfg, simclr, spec)
            model = model.to(dev)
            plain = train_plain(model, images, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                warmup_steps=cfg.warmup_steps, size=cfg.image_size, min_scale=min_scale,
                                at_seconds=[p["seconds"] for p in ours["points"]],
                                measure=lambda enc: task.monitor(cfg, enc)["knn_top1"], seed=seed,
                                cosine_seconds=ours["points"][-1]["seconds"], min_lr_ratio=cfg.min_lr_ratio,
                                autocast=autocast)
            log(f"  plain loop, seed {seed}: kNN {100 * plain['points'][-1]['knn_top1']:.1f}")
            # the per-item views feed the same method's step where the peer reads two views (SimCLR, BYOL,
            # SimSiam, MoCo, Barlow Twins, VICReg: its weights do not change the speed), so the ratio compares
            # pipelines, not models; else (RotNet's one view, SwAV's or DINO's multi-crop) a SimCLR model built for the purpose
            reference_model = model if model.num_views == 2 else PlainSimCLR(
                spec, simclr.objective.proj_hidden, simclr.objective.proj_dim, simclr.objective.temperature).to(dev)
            ref = reference_rate(reference_model, images.cpu(), dataclasses.replace(cfg, seed=seed),
                                 PerItemSimCLRViews(cfg.image_size, simclr.views[0].min_scale),
                                 min(30.0, max(2.0, seconds / 8)), autocast)
            runs.append({**pair_figures(ours, plain, ref, views, model.num_views), "seed": seed})
        reference = f"{type(reference_model).__name__}'s step on SimCLR's per-item views (2 per image)"
    return {
        "task": f"learning:{task_name}", "dataset": dataset, "seconds": seconds, "device": str(dev),
        "overrides": list(overrides or []), "mixed_precision": mixed_precision, "batch_size": cfg.batch_size, "encoder": spec, "views": views, "monitor_items": cfg.monitor_items,
        "clock": "kNN measurement paused in both", "peer": peer, "random_init_knn_top1": random_knn,
        "per_item_reference": reference,
        **mean_of_pairs(runs),
    }


def pair_figures(ours: dict, plain: dict, ref: float, views: int, plain_views: int) -> dict:
    """One pair's curve (the two sides' kNN at (a)'s points), final ratio and views/s."""
    curve = [{"seconds": a["seconds"], "mmssl": a["knn_top1"], "plain": b["knn_top1"], "plain_at_s": b["at_s"],
              "mmssl_step": a["step"], "plain_step": b["step"]} for a, b in zip(ours["points"], plain["points"])]
    rates = {"mmssl": views * ours["images"] / ours["train_s"], "plain": plain_views * plain["images"] / plain["train_s"],
             "per_item_reference": 2 * ref}
    return {"curve": curve, "monitor_s": ours["monitor_s"], "final_ratio": curve[-1]["mmssl"] / max(curve[-1]["plain"], 1e-9),
            "views_per_s": rates, "speedup_vs_per_item": rates["mmssl"] / rates["per_item_reference"]}


def _at_or_above(curve: list[dict]) -> bool:
    """Whether the library's kNN is at or above the plain loop's at every point of ``curve``."""
    return all(p["mmssl"] >= p["plain"] for p in curve)


def mean_of_pairs(runs: list[dict]) -> dict:
    """The row's figures from ``pair_figures`` of every pair: means (steps are the first pair's for
    (a), which are the same in every pair, and rounded means for the plain loop), the targets read on
    the means, and with more than one pair each pair's own curve, ratios and views/s under "pairs" and
    the mean gap (mmssl - plain kNN over every point of a pair; its mean over pairs and standard error)
    under "mean_gap"."""
    curve = []
    for at in zip(*(r["curve"] for r in runs)):
        curve.append({"seconds": round(fmean([p["seconds"] for p in at]), 3), "mmssl": fmean([p["mmssl"] for p in at]),
                      "plain": fmean([p["plain"] for p in at]), "plain_at_s": round(fmean([p["plain_at_s"] for p in at]), 3),
                      "mmssl_step": at[0]["mmssl_step"], "plain_step": round(fmean([p["plain_step"] for p in at]))})
    rates = {k: fmean([r["views_per_s"][k] for r in runs]) for k in runs[0]["views_per_s"]}
    row = {
        "curve": curve, "mmssl_monitor_s": round(fmean([r["monitor_s"] for r in runs]), 2),
        "final_ratio": curve[-1]["mmssl"] / max(curve[-1]["plain"], 1e-9),
        "views_per_s": {k: round(v, 1) for k, v in rates.items()},
        "speedup_vs_per_item": round(rates["mmssl"] / rates["per_item_reference"], 3),
        # what the library aims at: a curve at or above the plain loop's, twice the per-item pipeline's views/s
        "targets": {"curve_at_or_above_plain": _at_or_above(curve),
                    "views_per_s_2x_per_item": rates["mmssl"] >= 2 * rates["per_item_reference"]},
    }
    if len(runs) > 1:
        # how far apart the two sides are, beside the every-point target, which a pair's noise can tip
        gaps = [fmean([p["mmssl"] - p["plain"] for p in r["curve"]]) for r in runs]
        row["mean_gap"] = {"mean": fmean(gaps), "per_pair": [round(g, 4) for g in gaps],
                           "standard_error": stdev(gaps) / len(gaps) ** 0.5}
        row["pairs"] = [{"seed": r["seed"], "curve": r["curve"], "final_ratio": round(r["final_ratio"], 3),
                         "views_per_s": {k: round(v, 1) for k, v in r["views_per_s"].items()},
                         "speedup_vs_per_item": round(r["speedup_vs_per_item"], 3),
                         "curve_at_or_above_plain": _at_or_above(r["curve"])} for r in runs]
    return row


def train_device() -> torch.device:
    """Where ``run_training`` trains: accelerate's default, a GPU where one is available."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
