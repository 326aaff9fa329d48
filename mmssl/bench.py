"""``mmssl bench``: training throughput, memory and FLOPs of the tasks, beside peer implementations.

For each model task (``mae_image``, ``mae_video``, ``simclr_image``) the objective is built by the
task's own code with bench-sized overrides and trained on a synthetic in-memory batch: one step is
zero_grad, forward, backward and an AdamW step, the operations of ``mmssl.trainer``. A peer
implementation of the same model, configured identically, runs in the same process on the same
data (Hugging Face transformers' ViTMAE / VideoMAE, lightly's NT-Xent loss); their repeats are
interleaved so that a load that comes and goes on the machine falls on both alike.

Besides samples/s (median of the repeats), it reports the peak memory, the FLOPs of one full
training step counted by ``torch.utils.flop_counter.FlopCounterMode``, the FLOP/s achieved and
the utilisation against the matrix-multiply peak measured in the same run. Two data-path rows
complete it: random clip reading per video backend (decord, torchcodec, PyAV) and DAVIS-style
label propagation at 480p. ``benchmarks/video_io.py`` and ``benchmarks/track_speed.py`` are
command-line wrappers around the measuring functions here.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from mmssl.errors import MmsslError

MODEL_TASKS = ("mae_image", "mae_video", "simclr_image")
TASKS = (*MODEL_TASKS, "clip_loading", "tracking")
SIZES = ("tiny", "small", "full")
NOT_INSTALLED = "peer not installed"
NO_PEER = "no peer"

# (batch size, task config overrides) per bench size. "small" (the default) keeps one training
# step at about 1-3 s on a 2-core CPU; "full" is the papers' setting, meant for a GPU; "tiny" is
# for tests. The peers read their sizes off the objective built from these, never from here.
VIT_S = {"vit_size": "small", "vit_dim": 384, "vit_depth": 12, "vit_heads": 6}
MODEL_SIZES: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {
    "mae_image": {
        "tiny": (8, {"backbone": "vit", "image_size": 32, "patch_size": 8, "vit_dim": 64, "vit_depth": 2,
                     "vit_heads": 2, "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}),
        # ViT-S at batch 64 on 64 px images with 8 px patches: 64 tokens, 16 of them visible; at 224 px
        # with 16 px patches (196 tokens) one step takes about a minute on 2 CPU cores
        "small": (64, {"backbone": "vit", "image_size": 64, "patch_size": 8, **VIT_S,
                       "objective": {"decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8}}),
        # ViT-S/16 at 224 px, batch 64, with MAE's 512-d 8-block decoder
        "full": (64, {"backbone": "vit", "image_size": 224, "patch_size": 16, **VIT_S,
                      "objective": {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16}}),
    },
    "mae_video": {
        "tiny": (4, {"clip_len": 4, "frame_size": 32, "tubelet": "2,8,8", "vit_dim": 64, "vit_depth": 2,
                     "vit_heads": 2, "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}),
        # VideoMAE's ViT-S with its 192-d 4-block decoder, on 8 x 64 x 64 clips
        "small": (32, {"clip_len": 8, "frame_size": 64, "tubelet": "2,8,8", **VIT_S,
                      "objective": {"decoder_dim": 192, "decoder_depth": 4, "decoder_heads": 3}}),
        # VideoMAE's 16 x 224 x 224 clips in 2 x 16 x 16 tubelets
        "full": (16, {"clip_len": 16, "frame_size": 224, "tubelet": "2,16,16", **VIT_S,
                      "objective": {"decoder_dim": 192, "decoder_depth": 4, "decoder_heads": 3}}),
    },
    "simclr_image": {
        "tiny": (8, {"backbone": "convnet", "convnet_widths": "8,16,16,32", "image_size": 32,
                     "objective": {"proj_hidden": 64, "proj_dim": 32}}),
        # ResNet-18 with the CIFAR stem at 32 px, batch 64 (128 views)
        "small": (64, {"backbone": "resnet18", "small_stem": True, "image_size": 32,
                       "objective": {"proj_hidden": 512, "proj_dim": 128}}),
        # solo-learn's CIFAR setting: batch 256, a 2048-d projector
        "full": (256, {"backbone": "resnet18", "small_stem": True, "image_size": 32,
                       "objective": {"proj_hidden": 2048, "proj_dim": 128}}),
    },
}
# clip reading: a test video of `frames` frames at `size` px, `clips` random 16-frame clips at stride 2
CLIP_SIZES = {"tiny": {"frames": 60, "size": 128, "clips": 4}, "small": {"frames": 300, "size": 128, "clips": 20},
              "full": {"frames": 300, "size": 480, "clips": 50}}
# label propagation at DAVIS resolution: frames propagated (the first is given)
TRACK_FRAMES = {"tiny": 3, "small": 8, "full": 30}
STRIDE, DIM = 8, 256  # tracking features: CRW's ResNet-18 res4 at stride 8 (arXiv:2006.14613)


# --- devices, memory and FLOPs -------------------------------------------------------------------

def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda`` or None (cuda where available); cuda without a GPU is a one-line error."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise MmsslError(f"--device must be cpu or cuda, not '{name}'")
    if name == "cuda" and not torch.cuda.is_available():
        raise MmsslError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mb(field: str) -> float | None:
    """A ``Vm*`` line of /proc/self/status in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident memory of this process in MiB (0 where /proc is missing)."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of the process since it started (or since the last reset), in MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Tensors an earlier row freed stay in the heap, and a later row reusing them would not raise the
    RSS: its peak would hide what it allocated. After a trim a window starts from live memory only.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory over a window: CUDA's allocator peak on a GPU, the process's peak RSS on a CPU.

    ``getrusage`` cannot forget an earlier peak, so each window would inherit the largest one
    measured before it; on Linux writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the
    current RSS (after a heap trim), so each window sees its own. Where that fails the figure is the
    process's peak so far. ``memory_growth_mb`` is the peak less the memory in use when the window
    opened: on a CPU, what this side allocated while the other side's model was already resident.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            self.kind = "process peak RSS" if self._reset_rss() else "process peak RSS since start (getrusage)"
        self.before = self._now()

    def _reset_rss(self) -> bool:
        _release_free_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _now(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        return rss_mb()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()

    def figures(self) -> dict:
        peak = self.peak_mb()
        return {"peak_memory_mb": round(peak, 1), "memory_growth_mb": round(peak - self.before, 1),
                "memory_kind": self.kind}


def matmul_peak(device: torch.device) -> dict:
    """The best FLOP/s of square matrix products: fp32 on a CPU, bf16 on a GPU (the precisions
    the models run in), measured now so that utilisation shares the machine's current load."""
    # On a GPU one product takes about a millisecond, so each try times 10 to hide launch and sync costs.
    n, dtype, tries, reps = (8192, torch.bfloat16, 10, 10) if device.type == "cuda" else (2048, torch.float32, 5, 1)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    a @ b  # first-use allocations and kernel selection
    best = float("inf")
    for _ in range(tries):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return {"flops_per_s": 2 * n**3 / best, "dtype": str(dtype).removeprefix("torch."), "n": n, "tries": tries}


def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one that
# scaled_dot_product_attention dispatches to, whose attention products would count as zero.
_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``fn()`` runs (2 per multiply-add)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


# --- one implementation under test ----------------------------------------------------------------

@dataclasses.dataclass
class Side:
    """One implementation under test: a model and the function that computes its loss on the fixed batch."""

    name: str
    module: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]


def make_optimizer(module: nn.Module, device: torch.device, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The trainer's optimizer for both sides: fused AdamW (as transformers' Trainer also defaults to on torch >= 2.8)."""
    from mmssl.optim import make_optimizer as trainer_optimizer

    return trainer_optimizer([p for p in module.parameters() if p.requires_grad], device, lr, weight_decay)


def training_step(side: Side, optimizer: torch.optim.Optimizer, device: torch.device) -> Callable[[], None]:
    """One optimizer step as the trainer takes it: zero_grad, forward, backward, AdamW step."""
    side.module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # bf16 autocast on a GPU, as `accelerate launch --mixed_precision bf16`; fp32 on a CPU
        with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext():
            loss = side.loss(side.module)
        loss.backward()
        optimizer.step()

    return step


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
    """The model size in a few words: a ViT's read off the built objective, a backbone's from the config."""
    batch = cfg.batch_size
    if task_name == "simclr_image":
        stem = " small stem" if cfg.backbone.startswith("resnet") and cfg.small_stem else ""
        return (f"{cfg.backbone}{stem} at {cfg.image_size} px, proj {cfg.objective.proj_hidden}-{cfg.objective.proj_dim}, "
                f"b{batch} x 2 views")
    enc = objective.encoder
    sizes = "x".join(str(g * p) for g, p in zip(enc.grid, enc.patchify.patch))
    patch = "x".join(map(str, enc.patchify.patch))
    return (f"ViT {enc.embed_dim}x{len(enc.blocks)} h{enc.blocks[0].heads}, patch {patch} on {sizes}, "
            f"mask {objective.mask_ratio:g}, dec {objective.decoder_embed.out_features}x{len(objective.decoder_blocks)}, "
            f"b{batch}")


# --- peers ----------------------------------------------------------------------------------------

def _vit_shapes(objective: nn.Module) -> dict:
    """The encoder / decoder sizes of our MAE objective, in transformers' config names."""
    enc = objective.encoder
    dec_dim = objective.decoder_embed.out_features
    return {"hidden_size": enc.embed_dim, "num_hidden_layers": len(enc.blocks),
            "num_attention_heads": enc.blocks[0].heads, "intermediate_size": enc.blocks[0].mlp[0].out_features,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": 1e-6, "qkv_bias": True, "num_channels": enc.patchify.channels,
            "decoder_hidden_size": dec_dim, "decoder_num_hidden_layers": len(objective.decoder_blocks),
            "decoder_num_attention_heads": objective.decoder_blocks[0].heads,
            "decoder_intermediate_size": objective.decoder_blocks[0].mlp[0].out_features,
            "norm_pix_loss": objective.norm_pix_loss, "attn_implementation": "sdpa"}


def tube_mask(batch: int, grid: tuple[int, int, int], keep: int, device: torch.device) -> torch.Tensor:
    """VideoMAE's tube masking as a ``bool_masked_pos``: the same ``keep`` random spatial positions
    stay visible at every time index. Returns bool (B, t * h * w), True = masked, in (t, h, w) order."""
    t, h, w = grid
    ranks = torch.rand(batch, h * w, device=device).argsort(dim=1).argsort(dim=1)  # (B, h * w)
    return (ranks >= keep).repeat(1, t)


def _vitmae_peer(objective: nn.Module, data: dict, device: torch.device) -> Side:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    enc = objective.encoder
    (p, _), (g, _) = enc.patchify.patch, enc.grid
    config = ViTMAEConfig(image_size=g * p, patch_size=p, mask_ratio=objective.mask_ratio, **_vit_shapes(objective))
    x = data["input"]
    return Side("transformers ViTMAEForPreTraining", ViTMAEForPreTraining(config).to(device),
                lambda m: m(pixel_values=x).loss)


def _videomae_peer(objective: nn.Module, data: dict, device: torch.device) -> Side:
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    enc = objective.encoder
    (pt, p, _), (t, h, w) = enc.patchify.patch, enc.grid
    # use_mean_pooling=False keeps the encoder's final LayerNorm, as ours and VideoMAE's pretraining have it
    config = VideoMAEConfig(image_size=h * p, patch_size=p, num_frames=t * pt, tubelet_size=pt, use_mean_pooling=False,
                            **_vit_shapes(objective))
    x = data["input"].transpose(1, 2).contiguous()  # (B, T, C, H, W), VideoMAE's layout, made once
    keep = round(h * w * (1 - objective.mask_ratio))  # as our tube masking rounds it
    return Side("transformers VideoMAEForPreTraining", VideoMAEForPreTraining(config).to(device),
                lambda m: m(pixel_values=x, bool_masked_pos=tube_mask(x.shape[0], (t, h, w), keep, x.device)).loss)


class _LightlySimCLR(nn.Module):
    """Our encoder and projector (copies), with lightly's NTXentLoss in place of ``nt_xent``."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        from lightly.loss import NTXentLoss

        self.encoder, self.projector = copy.deepcopy(objective.encoder), copy.deepcopy(objective.projector)
        # one process: lightly gathers nothing, and neither does our nt_xent with a world of 1
        self.criterion = NTXentLoss(temperature=objective.temperature, gather_distributed=False)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        h = self.encoder.pool(self.encoder.forward_features(torch.cat(views)))  # (2B, D): one pass, as ours
        z0, z1 = self.projector(h).chunk(2)
        return self.criterion(z0, z1)


def _lightly_peer(objective: nn.Module, data: dict, device: torch.device) -> Side:
    views = data["views"]
    return Side("lightly NTXentLoss", _LightlySimCLR(objective).to(device), lambda m: m(views))


PEERS = {"mae_image": ("transformers", _vitmae_peer), "mae_video": ("transformers", _videomae_peer),
         "simclr_image": ("lightly", _lightly_peer)}


def peer_versions() -> dict[str, str | None]:
    """Installed versions of the peers' packages (None where missing), for the report."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("transformers", "lightly"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- the model rows -------------------------------------------------------------------------------

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


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps, with the GPU's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start


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
        peer = make_peer(ours.module, data, device)
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


# --- clip loading (benchmarks/video_io.py) ----------------------------------------------------------

def make_video(path: Path, frames: int, size: int, keyframe_every: int) -> tuple[int, int]:
    """Render a demo scene to ``path`` as H.264 at 30 fps, 128x128 or upscaled to 480x854; returns (H, W)."""
    from mmssl.modalities.video import render_scene, write_video

    clip = render_scene(seed=7, frames=frames, size=128)["cam0"]  # (T, 3, 128, 128)
    if size != 128:
        H, W = size, round(size * 16 / 9 / 2) * 2  # 16:9 (480x854), even for 4:2:0 chroma
        clip = torch.cat([
            F.interpolate(clip[s:s + 32].float(), size=(H, W), mode="bicubic", align_corners=False)
            .round().clamp(0, 255).to(torch.uint8)
            for s in range(0, frames, 32)
        ])
    write_video(path, clip, fps=30, crf=18, keyframe_every=keyframe_every)
    return tuple(clip.shape[-2:])


def clip_reading(path: Path, backend: str, clips: list[torch.Tensor]) -> dict:
    """Read every clip (frame indices) with ``backend``, two ways: a new reader per clip, as a
    DataLoader worker reading a dataset does, and one reader kept for all clips (with how much the
    resident memory grew while it was kept)."""
    from mmssl.modalities.video import VideoReader

    with VideoReader(path, backend) as r:  # first-use costs (loading codecs, caches) are not per clip
        r.get_batch(clips[0])
    start = time.perf_counter()
    for idx in clips:
        with VideoReader(path, backend) as r:
            r.get_batch(idx)
    per_clip_open = time.perf_counter() - start

    with VideoReader(path, backend) as r:
        r.get_batch(clips[0])  # warm-up: first-use allocations are not growth
        before = rss_mb()
        start = time.perf_counter()
        for idx in clips:
            r.get_batch(idx)
        kept = time.perf_counter() - start
        growth = rss_mb() - before
    n = len(clips)
    return {"clips_per_s_open_per_clip": round(n / per_clip_open, 2),
            "ms_per_clip_open_per_clip": round(1000 * per_clip_open / n, 2),
            "clips_per_s_reader_kept": round(n / kept, 2), "rss_growth_mb_reader_kept": round(growth, 1)}


def bench_clip_loading(size: str, repeats: int = 1, clip_len: int = 16, stride: int = 2, keyframe_every: int = 60,
                       log: Callable[[str], None] = print) -> dict:
    """Clips/s of every available backend on the same random clips, the median of ``repeats``
    interleaved rounds; the first backend (the one ``backend="auto"`` picks) is ours, the others its peers."""
    from mmssl.modalities.video import available_backends, clip_indices

    spec = CLIP_SIZES[size]
    backends = available_backends()
    if not backends:
        return {"task": "clip_loading", "status": "no video backend installed"}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        H, W = make_video(path, spec["frames"], spec["size"], keyframe_every)
        gen = torch.Generator().manual_seed(0)
        clips = [clip_indices(spec["frames"], clip_len, stride, gen) for _ in range(spec["clips"])]
        memory = PeakMemory(torch.device("cpu"))
        # One torch thread, as in a DataLoader worker: idle OpenMP threads left spinning by the
        # small tensor ops around each read would otherwise compete with the decoder for the cores.
        torch.set_num_threads(1)
        try:
            rounds = [{b: clip_reading(path, b, clips) for b in backends} for _ in range(repeats)]
        finally:
            torch.set_num_threads(threads)
    results = {b: {k: statistics.median(r[b][k] for r in rounds) for k in rounds[0][b]} for b in backends}
    for b in backends:
        log(f"clip_loading: {b} {results[b]['clips_per_s_open_per_clip']:.1f} clips/s")
    ours = backends[0]
    rate = results[ours]["clips_per_s_open_per_clip"]
    return {"task": "clip_loading", "size": f"{spec['clips']} clips of {clip_len} frames at stride {stride}, {H}x{W}",
            "video": {"frames": spec["frames"], "height": H, "width": W, "fps": 30, "keyframe_every": keyframe_every},
            "backend": ours, "samples_per_s": rate, "unit": "clips/s (a new reader per clip)", **memory.figures(),
            "backends": results,
            "ratio": {f"{ours}/{b}": round(rate / r["clips_per_s_open_per_clip"], 3) for b, r in results.items() if b != ours}}


# --- label propagation (benchmarks/track_speed.py) ----------------------------------------------------

def first_labels(height: int, width: int, objects: int = 3) -> torch.Tensor:
    """Three overlapping discs, ids 1..3, on background 0: (H, W) int64."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    labels = torch.zeros(height, width, dtype=torch.long)
    for i in range(objects):
        cy, cx, r = height * (0.3 + 0.2 * i), width * (0.25 + 0.25 * i), min(height, width) * 0.15
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i + 1
    return labels


def random_features(height: int, width: int, device: torch.device | str = "cpu") -> Callable[[int], torch.Tensor]:
    """Frame index -> seeded random stride-8 features (DIM, ceil(H / 8), ceil(W / 8)), made on
    demand so that what the propagation itself holds is what is measured."""
    h, w = -(-height // STRIDE), -(-width // STRIDE)
    return lambda i: torch.randn(DIM, h, w, generator=torch.Generator().manual_seed(i)).to(device)


def resnet18_stride8() -> nn.Module:
    """A random ResNet-18 cut after layer3, kept at stride 8 (256 channels), as CRW's encoder."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.layer3[0].conv1.stride = (1, 1)  # keep layer3 at stride 8: 256 channels, a denser map
    net.layer3[0].downsample[0].stride = (1, 1)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3).eval()


def propagation_speed(features: Callable[[int], torch.Tensor], labels: torch.Tensor, frames: int, *, context: int = 20,
                      topk: int = 10, radius: float = 12, temperature: float = 0.05, tile: int = 16) -> dict:
    """Propagate ``labels`` through ``frames`` frames; frames/s counts the ``frames - 1`` predicted."""
    from mmssl.evaluation.propagation import propagate

    start = time.perf_counter()
    out = propagate(features, labels, context=context, topk=topk, radius=radius, temperature=temperature,
                    num_frames=frames, tile=tile)
    seconds = time.perf_counter() - start
    if out.shape != (frames, *labels.shape):
        raise RuntimeError(f"propagate returned {tuple(out.shape)}, expected {(frames, *labels.shape)}")
    return {"frames": frames - 1, "seconds": round(seconds, 3), "frames_per_s": round((frames - 1) / seconds, 3)}


def bench_tracking(size: str, device: torch.device, height: int = 480, width: int = 854,
                   log: Callable[[str], None] = print) -> dict:
    frames = TRACK_FRAMES[size] + 1
    settings = {"context": 20, "topk": 10, "radius": 12, "temperature": 0.05, "tile": 16}
    labels = first_labels(height, width)
    memory = PeakMemory(device)
    result = propagation_speed(random_features(height, width, device), labels, frames, **settings)
    log(f"tracking: {result['frames_per_s']:.2f} frames/s")
    return {"task": "tracking", "size": f"{height}x{width}, {frames - 1} frames, random {DIM}-d stride-{STRIDE} features, "
                                        f"context {settings['context']}, top-{settings['topk']}, radius {settings['radius']}",
            "samples_per_s": result["frames_per_s"], "unit": "frames/s", **result, "settings": settings,
            **memory.figures(), "peer": None, "ratio": NO_PEER}


# --- the command --------------------------------------------------------------------------------------

def run(tasks: list[str] | None = None, size: str | None = None, device: str | None = None, steps: int = 2,
        warmup: int = 3, repeats: int = 5, compile: bool = False, log: Callable[[str], None] = print) -> dict:
    """Every requested measurement; returns the JSON-able report, its printed table under ``"table"``.

    ``size`` None is "full" on a GPU and "small" on a CPU; ``device`` None is cuda where available.
    """
    tasks = list(tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise MmsslError(f"unknown bench task '{unknown[0]}'; known: {', '.join(TASKS)}")
    if size is not None and size not in SIZES:
        raise MmsslError(f"--size must be one of {', '.join(SIZES)}, not '{size}'")
    if steps < 1 or repeats < 1 or warmup < 0:
        raise MmsslError(f"need --steps >= 1, --repeats >= 1 and --warmup >= 0; got {steps}, {repeats} and {warmup}")
    dev = resolve_device(device)
    size = size or ("full" if dev.type == "cuda" else "small")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    peak = matmul_peak(dev)
    log(f"matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} {peak['n']}x{peak['n']})")
    report: dict[str, Any] = {
        "device": str(dev), "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "size": size, "settings": {"steps": steps, "warmup": warmup, "repeats": repeats, "compile": compile},
        "peers": peer_versions(), "memory_kind": PeakMemory(dev).kind, "tasks": {},
    }
    for t in tasks:
        if t in MODEL_TASKS:
            report["tasks"][t] = bench_model(t, size, dev, steps, warmup, repeats, compile, log)
            # The peak is measured again after every model and the best kept: on a machine shared with
            # other work one measurement can fall in a busy moment and make utilisation exceed 100%.
            again = matmul_peak(dev)
            tries = peak["tries"] + again["tries"]
            peak = {**max(peak, again, key=lambda m: m["flops_per_s"]), "tries": tries}
        elif t == "clip_loading":
            report["tasks"][t] = bench_clip_loading(size, repeats, log=log)
        else:
            report["tasks"][t] = bench_tracking(size, dev, log=log)
    report["matmul_peak"], report["matmul_peak_flops"] = peak, peak["flops_per_s"]
    for row in report["tasks"].values():
        for figures in (row, row.get("peer"), row.get("compiled")):
            if figures and "flops_per_s" in figures:
                figures["utilisation"] = figures["flops_per_s"] / peak["flops_per_s"]
    report["table"] = format_table(report)
    return report


def _mem(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def format_table(report: dict) -> str:
    peak = report["matmul_peak"]
    s = report["settings"]
    lines = [(f"mmssl bench on {report['device_name']}, torch {report['torch']}, {report['threads']} threads; "
              f"size {report['size']}: median of {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up"),
             (f"matmul peak: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['dtype']} {peak['n']}x{peak['n']}, "
              f"best of {peak['tries']}); ratio = mmssl samples/s / peer samples/s"), ""]
    rows = [("task", "size", "samples/s", "peak mem", "GFLOP/sample", "GFLOP/s", "util %", "peer", "ratio")]

    def model_row(task: str, r: dict) -> tuple:
        return (task, r["size"], f"{r['samples_per_s']:.2f}", _mem(r["peak_memory_mb"]),
                f"{r['flops_per_sample'] / 1e9:.3f}", f"{r['flops_per_s'] / 1e9:.1f}", f"{100 * r['utilisation']:.1f}")

    for task, r in report["tasks"].items():
        if task in MODEL_TASKS:
            peer = r["peer"]
            if "samples_per_s" in peer:
                rows.append((*model_row(task, r), f"{peer['name']}: {peer['samples_per_s']:.2f}/s",
                             f"{r['ratio']:.2f}"))
            else:
                rows.append((*model_row(task, r), peer["name"], str(r["ratio"])))
            if "compiled" in r:
                c = r["compiled"]
                size = f"torch.compile: x{c['speedup_vs_eager']:.2f} eager, {c['compile_s']:.0f} s to compile"
                rows.append((*model_row(task + " compiled", {**c, "size": size}), rows[-1][7],
                             f"{c['ratio']:.2f}" if "ratio" in c else str(r["ratio"])))
        elif task == "clip_loading":
            if "backends" not in r:
                rows.append((task, "-", "-", "-", "-", "-", "-", r["status"], "-"))
                continue
            ours = r["backend"]
            peers = [(b, v) for b, v in r["backends"].items() if b != ours] or [(None, None)]
            for b, v in peers:
                peer = f"{b}: {v['clips_per_s_open_per_clip']:.1f} clips/s" if b else NO_PEER
                ratio = f"{r['ratio'][f'{ours}/{b}']:.2f}" if b else NO_PEER
                rows.append((f"clip_loading ({ours})", r["size"], f"{r['samples_per_s']:.1f} clips",
                             _mem(r["peak_memory_mb"]), "-", "-", "-", peer, ratio))
        else:
            rows.append((task, r["size"], f"{r['samples_per_s']:.2f} frames", _mem(r["peak_memory_mb"]),
                         "-", "-", "-", NO_PEER, "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 8}
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    samples = {"mae_image": "images", "mae_video": "clips", "simclr_image": "images of 2 views"}
    shown = [f"{t} {samples[t]}" for t in report["tasks"] if t in samples]
    lines.append(f"\n{'samples: ' + ', '.join(shown) + '. ' if shown else ''}peak mem: {report['memory_kind']} "
                 "while that row ran (the peer's is in the JSON).")
    return "\n".join(lines)
