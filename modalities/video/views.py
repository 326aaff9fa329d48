"""Clip views made on whole batches on the device.

A DataLoader worker decodes a clip, resizes its frames to a square working size so clips of any
size stack into one batch (``to_working_size``), and draws the clip's view with the item's own
generator (``draw_view``): a random resized crop box, as fractions of the frame, and a flip
(``decode_view`` does both for one clip).
``crop_views`` then cuts, resizes and flips every clip of a batch at once on the device, the
same box for all frames of a clip, so positions correspond across its frames.

The box is drawn in the frame's own pixels (its aspect ratio means what it says) and kept as
fractions, so it covers the same part of the scene whatever the working size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmssl.errors import DataError


def to_working_size(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, size, size); frames already that size are returned as they are."""
    if frames.shape[-2:] == (size, size):
        return frames
    lead = frames.shape[:-3]
    x = F.interpolate(frames.reshape(-1, *frames.shape[-3:]).float(), size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, 3, size, size)


def random_resized_box(H: int, W: int, min_scale: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """A random crop box (top, left, h, w) in pixels covering [min_scale, 1] of the area, aspect in
    [3/4, 4/3] (torchvision's RandomResizedCrop: 10 tries, then the whole frame)."""
    for _ in range(10):
        area = H * W * (min_scale + (1 - min_scale) * float(torch.rand((), generator=gen)))
        aspect = math.exp(math.log(3 / 4) + math.log(16 / 9) * float(torch.rand((), generator=gen)))
        h, w = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 0 < h <= H and 0 < w <= W:
            top = int(torch.randint(H - h + 1, (), generator=gen))
            left = int(torch.randint(W - w + 1, (), generator=gen))
            return top, left, h, w
    return 0, 0, H, W


def draw_view(H: int, W: int, min_scale: float, gen: torch.Generator) -> torch.Tensor:
    """One clip's view of an H x W video: float (5,) = (top, left, bottom, right) as fractions of
    the frame, then the flip (1.0: mirror left-right, with probability 1/2)."""
    top, left, h, w = random_resized_box(H, W, min_scale, gen)
    flip = float(torch.rand((), generator=gen) < 0.5)
    return torch.tensor([top / H, left / W, (top + h) / H, (left + w) / W, flip], dtype=torch.float64).float()


def check_decode_size(size: int) -> None:
    if size < 1:
        raise DataError(f"decode_size must be a positive number of pixels, not {size}")


def decode_view(frames: torch.Tensor, size: int, min_scale: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A worker's part for one decoded clip uint8 (..., 3, H, W): (its frames at the working size,
    uint8 (..., 3, size, size); one view for all of them from ``draw_view``, float (5,))."""
    check_decode_size(size)
    view = draw_view(frames.shape[-2], frames.shape[-1], min_scale, gen)
    return to_working_size(frames, size), view


def crop_views(frames: torch.Tensor, views: torch.Tensor, size: int) -> torch.Tensor:
    """Each clip's crop box resized to ``size`` and flipped as its view says, for a whole batch.

    frames: uint8 (0..255) or float (0..1) (B, T, 3, H, W), T frames per clip sharing one view;
    views: (B, 5) from ``draw_view``. Returns float [0, 1] (B, T, 3, size, size).

    ``roi_align`` samples each output pixel as the mean of ceil(box / size) x ceil(box / size)
    bilinear samples spread over its cell, an area filter when the box shrinks (no aliasing) and
    plain bilinear when it grows; every output depends on its own clip alone.
    """
    from torchvision.ops import roi_align

    B, T, C, H, W = frames.shape
    x = frames.reshape(B * T, C, H, W).float()
    if frames.dtype == torch.uint8:
        x = x / 255
    scale = torch.tensor([H, W, H, W], device=x.device, dtype=x.dtype)
    box = views[:, :4].to(x.dtype) * scale  # (B, 4) top, left, bottom, right in working pixels
    index = torch.arange(B * T, device=x.device, dtype=x.dtype)[:, None]
    rois = torch.cat([index, box.repeat_interleave(T, dim=0)[:, [1, 0, 3, 2]]], dim=1)  # (B * T, 5): i, x1, y1, x2, y2
    out = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    out = out.reshape(B, T, C, size, size).clamp_(0, 1)
    flip = views[:, 4].to(torch.bool).reshape(B, 1, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)
