"""Video evaluation: dense frame features, DAVIS label propagation scored with J&F, and the
temporal alignment error between two synchronised camera views.

Every encoder is measured the same way, beside a randomly initialised encoder of the same
architecture and raw Lab pixels, so a learned encoder is always shown against both baselines.
An encoder says what it reads in its saved metadata (``input``): "rgb" (normalised RGB, the
image convention) or "lab_l" (the L channel of Lab scaled to [-1, 1], the grayscale input of
colorization tracking, arXiv:1806.09594).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INPUTS = ("rgb", "lab_l")


def encoder_input(frames: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 frames (T, 3, H, W) -> what the encoder reads: (T, 3, H, W) normalised RGB or (T, 1, H, W) L."""
    if kind == "rgb":
        from mmssl.modalities.vision import normalize

        return normalize(frames)
    if kind == "lab_l":
        from mmssl.objectives.colorization import rgb_to_lab

        return rgb_to_lab(frames.float() / 255)[:, :1] / 50 - 1
    raise ValueError(f"encoder input must be one of {', '.join(INPUTS)}, not '{kind}'")


@torch.no_grad()
def frame_features(encoder: nn.Module, frames: torch.Tensor, kind: str = "rgb", batch: int = 8) -> torch.Tensor:
    """Dense features of every frame: uint8 (T, 3, H, W) -> (T, D, h, w) on the CPU.

    Encoders with ``feature_map`` give their map (stride 8 for the tracking backbones); a ViT cut
    into (pt, ph, pw) tubelets sees each frame repeated pt times, a still clip, so every frame
    gets its own (h, w) grid.
    """
    device = next(encoder.parameters()).device
    tubelet = getattr(getattr(encoder, "patchify", None), "patch", ())
    outs = []
    for start in range(0, frames.shape[0], batch):
        x = encoder_input(frames[start:start + batch], kind).to(device)
        if len(tubelet) == 3:
            x = x[:, :, None].expand(-1, -1, tubelet[0], -1, -1)  # (b, C, pt, H, W)
            fmap = encoder.feature_map(x)[:, :, 0]  # (b, D, 1, h, w) -> (b, D, h, w)
        elif hasattr(encoder, "feature_map"):
            fmap = encoder.feature_map(x)
        else:
            raise ValueError(f"{type(encoder).__name__} has no feature_map: it cannot give dense features")
        outs.append(fmap.float().cpu())
    return torch.cat(outs)


def lab_pixel_features(frames: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """The raw-pixel baseline: each stride x stride block of Lab pixels, flattened.

    uint8 (T, 3, H, W) -> (T, 3 * stride^2, ceil(H / stride), ceil(W / stride)); each Lab channel is
    standardised over the video first so L does not outweigh a and b.
    """
    from mmssl.objectives.colorization import rgb_to_lab

    lab = rgb_to_lab(frames.float() / 255)  # (T, 3, H, W)
    lab = (lab - lab.mean(dim=(0, 2, 3), keepdim=True)) / lab.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    H, W = lab.shape[-2:]
    lab = F.pad(lab, (0, (-W) % stride, 0, (-H) % stride), mode="replicate")
    return F.pixel_unshuffle(lab, stride)


def features_for(encoder: nn.Module | str, kind: str = "rgb", stride: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """frames uint8 (T, 3, H, W) -> (T, D, h, w): an encoder's dense features, or ``"pixels"``."""
    if isinstance(encoder, str):
        if encoder != "pixels":
            raise ValueError(f"unknown feature baseline '{encoder}' (known: pixels)")
        return lambda frames: lab_pixel_features(frames, stride)
    return lambda frames: frame_features(encoder, frames, kind)


def track_davis(
    features: Callable[[torch.Tensor], torch.Tensor],
    davis: Any,
    *,
    context: int = 20,
    topk: int = 10,
    radius: float = 12,
    temperature: float = 0.05,
    output: str | Path | None = None,
    overlay: bool = False,
    max_sequences: int | None = None,
    protocol: str = "crw",
) -> dict[str, Any]:
    """Propagate every sequence's first-frame masks and score them with J&F (DAVIS-2017 protocol).

    Args:
        features: frames -> dense features (see ``features_for``).
        davis: a ``mmssl.modalities.video.DavisRoot``.
        context, topk, radius, temperature: the propagation settings (CRW defaults, arXiv:2006.14613).
        protocol: "crw" (the published propagation) or "legacy" (see ``mmssl.evaluation.propagation``).
        output: where to write the results layout ``OUT/<seq>/00000.png ...`` (palette PNGs), and with
            ``overlay`` an ``OUT/<seq>.mp4`` of the frames with the masks drawn over them.
    Returns:
        {"summary": global and per-sequence J / F, "table": printable, "fps": frames per second}.
    """
    import time

    from mmssl.evaluation.davis import evaluate_sequence, format_table, summarize
    from mmssl.evaluation.overlay import save_palette_png, write_overlay
    from mmssl.evaluation.propagation import propagate

    names = list(davis.sequences)[:max_sequences]
    per_sequence, frames_done, seconds = {}, 0, 0.0
    for name in names:
        frames, gt = davis.frames(name), davis.masks(name)
        start = time.perf_counter()
        pred = propagate(features(frames), gt[0].long(), context=context, topk=topk, radius=radius,
                         temperature=temperature, out_size=tuple(frames.shape[-2:]), protocol=protocol)
        seconds += time.perf_counter() - start
        frames_done += frames.shape[0]
        per_sequence[name] = evaluate_sequence(gt.numpy(), pred.numpy())
        if output is not None:
            folder = Path(output) / name
            folder.mkdir(parents=True, exist_ok=True)
            for t, labels in enumerate(pred):
                save_palette_png(labels.to(torch.uint8).numpy(), folder / f"{t:05d}.png", davis.palette)
            if overlay:
                write_overlay(frames, pred, Path(output) / f"{name}.mp4", davis.palette)
    summary = summarize(per_sequence)
    return {"summary": summary, "table": format_table(summary), "fps": frames_done / max(seconds, 1e-9),
            "sequences": len(names)}


@torch.no_grad()
def embed_frames(embed: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """uint8 frames (T, 3, H, W) -> (T, D) with ``embed`` applied in batches."""
    return torch.cat([embed(frames[s:s + batch]).float().cpu() for s in range(0, frames.shape[0], batch)])


def alignment_error(view0: torch.Tensor, view1: torch.Tensor) -> float:
    """Temporal alignment error of TCN (arXiv:1704.06888): for each frame t of view 0, the frame
    t_nn of view 1 whose embedding is nearest; mean |t - t_nn| / T. 0 is perfect alignment, about
    1/3 is chance for uniformly random matches.

    Args:
        view0, view1: (T, D) embeddings of the same T synchronised moments from two cameras.
    """
    if view0.shape != view1.shape or view0.ndim != 2:
        raise ValueError(f"expected two (T, D) embeddings of equal shape, got {tuple(view0.shape)} and {tuple(view1.shape)}")
    T = view0.shape[0]
    nearest = torch.cdist(view0.float(), view1.float()).argmin(dim=1)
    return float((nearest - torch.arange(T)).abs().float().mean() / T)


def pooled_embedding(encoder: nn.Module, kind: str = "rgb") -> Callable[[torch.Tensor], torch.Tensor]:
    """frames uint8 (B, 3, H, W) -> (B, D): the encoder's pooled features of each frame."""

    def embed(frames: torch.Tensor) -> torch.Tensor:
        fmap = frame_features(encoder, frames, kind)  # (B, D, h, w)
        return fmap.flatten(2).mean(dim=2)

    return embed


def pixel_embedding(size: int = 16) -> Callable[[torch.Tensor], torch.Tensor]:
    """The raw-pixel baseline for alignment: each frame resized to size x size, flattened."""

    def embed(frames: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(frames.float() / 255, size=(size, size), mode="area")
        return small.flatten(1)

    return embed


def view_alignment(embeds: dict[str, Callable[[torch.Tensor], torch.Tensor]], scenes: list[torch.Tensor]) -> dict[str, float]:
    """Mean alignment error over scenes for each named embedding.

    Args:
        embeds: name -> frames (B, 3, H, W) uint8 -> (B, D).
        scenes: each (V >= 2, T, 3, H, W) uint8 synchronised views; views 0 and 1 are compared.
    """
    out = {}
    for name, embed in embeds.items():
        errors = [alignment_error(embed_frames(embed, views[0]), embed_frames(embed, views[1])) for views in scenes]
        out[name] = sum(errors) / max(len(errors), 1)
    return out


def chance_alignment_error(T: int) -> float:
    """Expected |t - u| / T for t, u independent and uniform on 0..T-1: (T^2 - 1) / (3 T^2)."""
    return (T * T - 1) / (3 * T * T) if T > 0 else math.nan
