"""Which frames a training clip takes from a video."""
from __future__ import annotations

import torch


def clip_indices(num_frames: int, clip_len: int, stride: int, generator: torch.Generator) -> torch.Tensor:
    """``clip_len`` frame indices ``stride`` apart from a uniformly random start, inside the video.

    A video shorter than the clip's span ``(clip_len - 1) * stride + 1`` gets the largest stride
    that fits; one shorter than ``clip_len`` frames gets stride 1 with its last frame repeated.
    Exactly one number is drawn from ``generator`` whatever the lengths, so the draws that follow
    do not depend on the video's length.

    Returns:
        LongTensor (clip_len,), non-decreasing, in [0, num_frames).
    """
    if num_frames < 1:
        raise ValueError(f"clip_indices: a video needs at least one frame, got num_frames={num_frames}")
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_indices: clip_len and stride must be >= 1, got {clip_len} and {stride}")
    if clip_len > 1:
        stride = max(1, min(stride, (num_frames - 1) // (clip_len - 1)))
    span = (clip_len - 1) * stride + 1
    start = int(torch.randint(max(num_frames - span, 0) + 1, (), generator=generator))
    return (start + stride * torch.arange(clip_len)).clamp_(max=num_frames - 1)
