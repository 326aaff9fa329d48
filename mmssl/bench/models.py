"""The model rows of ``mmssl bench``: our objective, built by its task, trained beside a peer.

For each model task (``mae_image``, ``mae_video``, ``simclr_image``) the objective is built by the
task's own code with bench-sized overrides and trained on a synthetic in-memory batch: one step is
zero_grad, forward, backward and an AdamW step, the operations of ``mmssl.trainer``. A peer
implementation of the same model, configured identically from the encoder spec and the task
config, runs in the same process on the same data; their repeats are interleaved so that a load
that comes and goes on the machine falls on both alike.
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmssl.bench.meters import PeakMemory, Side, count_flops, make_optimizer, time_steps, training_step
from mmssl.bench.peers import NOT_INSTALLED, PEERS, vit_sizes

MODEL_TASKS = ("mae_image", "mae_video", "simclr_image")

# (batch size, task config overrides) per bench size. "small" (the default) keeps one training
# step at about 1-3 s on a 2-core CPU; "full" is the papers' setting, meant for a GPU; "tiny" is
# for tests. The peers read their sizes off the objective built from these, never from here.
VIT_S = {"size": "small", "dim": 384, "depth": 12, "heads": 6}
MODEL_SIZES: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {
    "mae_image": {
        "tiny": (8, {"image_size": 32, "encoder": {"vit": {"patch": [8], "dim": 64, "depth": 2, "heads": 2}},
                     "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}),
        # ViT-S at batch 64 on 64 px images with 8 px patches: 64 tokens, 16 of them visible; at 224 px
        # with 16 px patches (196 tokens) one step takes about a minute on 2 CPU cores
        "small": (64, {"image_size": 64, "encoder": {"vit": {**VIT_S, "patch": [8]}},
                       "objective": {"decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8}}),
        # ViT-S/16 at 224 px, batch 64, with MAE's 512-d 8-block decoder
        "full": (64, {"image_size": 224, "encoder": {"vit": {**VIT_S, "patch": [16]}},
                      "objective": {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16}}),
    },
    "mae_video": {
        "tiny": (4, {"clip_len": 4, "frame_size": 32, "encoder": {"vit": {"patch": [2, 8, 8], "dim": 64, "depth": 2,
                                                                          "heads": 2}},
                     "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}),
        # VideoMAE's ViT-S with its 192-d 4-block decoder, on 8 x 64 x 64 clips
        "small": (32, {"clip_len": 8, "frame_size": 64, "encoder": {"vit": {**VIT_S, "patch": [2, 8, 8]}},
                      "objective": {"decoder_dim": 192, "decoder_depth": 4, "decoder_heads": 3}}),
        # VideoMAE's 16 x 224 x 224 clips in 2 x 16 x 16 tubelets
        "full": (16, {"clip_len": 16, "frame_size": 224, "encoder": {"vit": {**VIT_S, "patch": [2, 16, 16]}},
                      "objective": {"decoder_dim": 192, "decoder_depth": 4, "decoder_heads": 3}}),
    },
    "simclr_image": {
        "tiny": (8, {"encoder": {"name": "convnet", "convnet": {"widths": [8, 16, 16, 32]}}, "image_size": 32,
                     "objective": {"proj_hidden": 64, "proj_dim": 32}}),
        # ResNet-18 with the CIFAR stem at 32 px, batch 64 (128 views)
        "small": (64, {"encoder": {"name": "resnet", "resnet": {"arch": "resnet18", "small_stem": True}}, "image_size": 32,
                       "objective": {"proj_hidden": 512, "proj_dim": 128}}),
        # solo-learn's CIFAR setting: batch 256, a 2048-d projector
        "full": (256, {"encoder": {"name": "resnet", "resnet": {"arch": "resnet18", "small_stem": True}}, "image_size": 32,
                       "objective": {"proj_hidden": 2048, "proj_dim": 128}}),
    },
}


def build_ours(task_name: str, size: str, device: torch.device, batch_size: int | None = None) -> tuple[Side, Any, dict]:
    """Our objective, built by the task from ``MODEL_SIZES``, and a synthetic batch for it.

    Returns:
        the side, the resolved task config, and the batch (on ``device``).
    """
    from mmssl.run import resolve_config

    batch, overrides = MODEL_SIZES[task_name][size]
    batch = batch_size or batch
    task, cfg = resolve_config(task_name, None, {**overrides, "batch_size": batch, "num_workers": 0}, [])
    objective = task.build_objective(cfg).to(device)
    gen = torch.Generator().manual_seed(0)
    if task_name == "mae_image":
        data = {"input": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)}
    elif task_name == "mae_video":
        data = {"input": torch.randn(batch, 3, cfg.clip_len, cfg.frame_size, cfg.frame_size, generator=gen)}
    else:
        data = {"views": [torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen) for _ in range(2)]}
    data = {k: [v.to(device) for v in x] if isinstance(x, list) else x.to(device) for k, x in data.items()}
    return Side("mmssl", objective, lambda m: m(data)["loss"]), cfg, data


def describe(task_name: str, objective: nn.Module, cfg: Any) -> str:
    """The model size in a few words, from the encoder's spec and the task config."""
    batch = cfg.batch_size
    if task_name == "simclr_image":
        name = cfg.encoder.resnet.arch if cfg.encoder.name == "resnet" else cfg.encoder.name
        stem = " small stem" if cfg.encoder.name == "resnet" and cfg.encoder.resnet.small_stem else ""
        return (f"{name}{stem} at {cfg.image_size} px, proj {cfg.objective.proj_hidden}-{cfg.objective.proj_dim}, "
                f"b{batch} x 2 views")
    v = vit_sizes(objective.encoder.spec)
    return (f"ViT {v['dim']}x{v['depth']} h{v['heads']}, patch {'x'.join(map(str, v['patch']))} on "
            f"{'x'.join(map(str, v['input_size']))}, mask {cfg.objective.mask_ratio:g}, "
            f"dec {cfg.objective.decoder_dim}x{cfg.objective.decoder_depth}, b{batch}")


@dataclasses.dataclass
class Prepared:
    """A side ready to time: its step and optimizer, one step's FLOPs, and the memory its set-up and warm-up took."""

    step: Callable[[], None]
    optimizer: torch.optim.Optimizer
    flops_per_step: int
    memory: dict


def prepare(side: Side, device: torch.device, cfg: Any, warmup: int) -> Prepared:
    """Build the optimizer, count one step's FLOPs (that step is also the first warm-up step: it
    allocates the optimizer state), then run ``warmup`` more steps."""
    memory = PeakMemory(device)
    optimizer = make_optimizer(side.module, device, cfg.lr, cfg.weight_decay)
    step = training_step(side, optimizer, device)
    flops = count_flops(step)
    for _ in range(warmup):
        step()
    return Prepared(step, optimizer, flops, memory.figures())


def _figures(seconds: list[float], steps: int, batch: int, prep: Prepared) -> dict:
    rates = [steps * batch / s for s in seconds]
    rate = statistics.median(rates)
    per_sample = prep.flops_per_step / batch
    return {"samples_per_s": round(rate, 3), "samples_per_s_repeats": [round(r, 3) for r in rates],
            "step_s": round(batch / rate, 4), "flops_per_sample": per_sample, "flops_per_s": per_sample * rate,
            **prep.memory}


def bench_model(task_name: str, size: str, device: torch.device, steps: int, warmup: int, repeats: int,
                compile: bool = False, log: Callable[[str], None] = print) -> dict:
    """Ours and the peer, trained side by side on the same batch; see the module docstring.
    Utilisation is left to the caller, who knows the matmul peak."""
    torch.manual_seed(0)
    ours, cfg, data = build_ours(task_name, size, device)
    batch = cfg.batch_size
    label = describe(task_name, ours.module, cfg)
    log(f"{task_name}: {label}")
    our_prep = prepare(ours, device, cfg, warmup)  # before the peer exists, so its memory is ours alone

    package, make_peer = PEERS[task_name]
    try:
        peer = make_peer(ours.module, cfg, data, device)
    except ImportError:
        peer = None
    peer_prep = prepare(peer, device, cfg, warmup) if peer is not None else None

    ours_s, peer_s = [], []
    for r in range(repeats):  # interleaved: a background load that comes and goes falls on both
        ours_s.append(time_steps(our_prep.step, steps, device))
        if peer_prep is not None:
            peer_s.append(time_steps(peer_prep.step, steps, device))
        log(f"  repeat {r + 1}/{repeats}: mmssl {ours_s[-1] / steps:.2f} s/step"
            + (f", peer {peer_s[-1] / steps:.2f} s/step" if peer_s else ""))

    row = {"task": task_name, "size": label, "batch_size": batch, **_figures(ours_s, steps, batch, our_prep)}
    if peer is None:
        row["peer"] = {"name": f"{package} ({NOT_INSTALLED})", "status": NOT_INSTALLED}
        row["ratio"] = NOT_INSTALLED
    else:
        row["peer"] = {"name": peer.name, **_figures(peer_s, steps, batch, peer_prep)}
        row["ratio"] = round(row["samples_per_s"] / row["peer"]["samples_per_s"], 3)
    if compile:
        row["compiled"] = bench_compiled(ours, our_prep, device, steps, repeats, batch, log)
        row["compiled"]["speedup_vs_eager"] = round(row["compiled"]["samples_per_s"] / row["samples_per_s"], 3)
        if peer is not None:
            row["compiled"]["ratio"] = round(row["compiled"]["samples_per_s"] / row["peer"]["samples_per_s"], 3)
    del ours, peer, our_prep, peer_prep, data
    gc.collect()
    return row


def bench_compiled(ours: Side, eager: Prepared, device: torch.device, steps: int, repeats: int, batch: int,
                   log: Callable[[str], None]) -> dict:
    """Our objective under ``torch.compile``, with the same weights and optimizer. Its FLOPs are the
    eager step's: the counter cannot see inside compiled kernels, and compiling keeps the model's maths.
    Its peak memory includes the compilation."""
    compiled = Side("mmssl compiled", torch.compile(ours.module), ours.loss)
    step = training_step(compiled, eager.optimizer, device)
    memory = PeakMemory(device)
    start = time.perf_counter()
    step()  # compiles forward and backward
    step()  # a second call: anything recompiled once the optimizer state exists
    compile_s = time.perf_counter() - start
    prep = dataclasses.replace(eager, step=step, memory=memory.figures())
    out = _figures([time_steps(step, steps, device) for _ in range(repeats)], steps, batch, prep)
    log(f"  compiled: {compile_s:.0f} s to compile, {out['step_s']:.2f} s/step")
    return {"compile_s": round(compile_s, 1), **out}
