"""Data-path rows of ``mmssl bench``: random clip reading per video backend (decord, torchcodec,
PyAV) and DAVIS-style label propagation at 480p. ``benchmarks/video_io.py`` and
``benchmarks/track_speed.py`` are command-line wrappers around the measuring functions here.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.bench.meters import PeakMemory, rss_mb
from mmssl.bench.peers import NO_PEER

# clip reading: a test video of `frames` frames at `size` px, `clips` random 16-frame clips at stride 2
CLIP_SIZES = {"tiny": {"frames": 60, "size": 128, "clips": 4}, "small": {"frames": 300, "size": 128, "clips": 20},
              "full": {"frames": 300, "size": 480, "clips": 50}}
# label propagation at DAVIS resolution: frames propagated (the first is given)
TRACK_FRAMES = {"tiny": 3, "small": 8, "full": 30}
STRIDE, DIM = 8, 256  # tracking features: CRW's ResNet-18 res4 at stride 8 (arXiv:2006.14613)


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


def stride8_encoder() -> nn.Module:
    """A random ResNet-18 cut after layer3 at stride 8 (256 channels): mmssl's ``ResNet(out_stride=8)``,
    the encoder the video tasks track with. Its layer3 keeps stride 1 and dilates its second block
    by 2, where CRW (arXiv:2006.14613) only removes the stride: the same weights, feature map and
    multiply-adds, with a wider receptive field. Returns a module (1, 3, H, W) -> (1, 256, H / 8, W / 8)."""
    import mmssl.encoders  # noqa: F401  (registers the encoders)
    from mmssl.registry import ENCODERS

    encoder = ENCODERS.build("resnet", arch="resnet18", out_stride=8).eval()
    return _FeatureMap(encoder)


class _FeatureMap(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_map(x)


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
