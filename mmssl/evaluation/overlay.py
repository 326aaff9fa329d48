"""Masks a person can look at: DAVIS-style palette PNGs and videos of frames with masks drawn over them.

DAVIS annotations and results are single-channel PNGs in palette ("P") mode whose pixel values
are object ids; the colours come from the PASCAL VOC colour map, which spreads the bits of the
id over the three channels so neighbouring ids get distinct colours.
"""
from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def davis_palette(n: int = 256) -> list[int]:
    """The VOC / DAVIS colour map as a flat [r0, g0, b0, r1, ...] list of 3 n values.

    Bit 3 j + c of the id sets bit 7 - j of channel c: 0 black, 1 (128, 0, 0), 2 (0, 128, 0),
    3 (128, 128, 0), 4 (0, 0, 128), ..., 255 (224, 224, 192).
    """
    ids = np.arange(n)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):
        for c in range(3):
            rgb[:, c] |= ((ids >> (3 * j + c)) & 1) << (7 - j)
    return rgb.flatten().tolist()


def _palette_rgb(palette: Sequence[int] | None) -> np.ndarray:
    """A flat palette (possibly shorter than 256 colours, as PIL returns them) -> uint8 (256, 3)."""
    full = np.array(davis_palette(), dtype=np.uint8).reshape(256, 3)
    if palette is not None:
        given = np.asarray(palette, dtype=np.uint8).flatten()[: 768]
        full.flat[: len(given)] = given
    return full


def save_palette_png(labels: Any, path: str | Path, palette: Sequence[int] | None = None) -> Path:
    """Write ids uint8 (H, W) as a palette PNG (the DAVIS annotation / result format); returns the path."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 2 or labels.size == 0 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"expected ids 0..255 of shape (H, W), got shape {labels.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8))  # mode "L"
    image.putpalette(_palette_rgb(palette).flatten().tolist())  # turns it into mode "P", values kept
    image.save(path, format="PNG")
    return path


def load_palette_png(path: str | Path) -> tuple[np.ndarray, list[int] | None]:
    """Read a palette PNG -> (ids uint8 (H, W), its flat palette, or None for a non-palette image).

    An 8-bit grayscale PNG reads as its values; any other mode is an error, since colours are not ids.
    """
    with Image.open(path) as image:
        if image.mode == "P":
            return np.array(image, dtype=np.uint8), image.getpalette()
        if image.mode == "L":
            return np.array(image, dtype=np.uint8), None
        raise ValueError(f"{path}: a {image.mode} image, not a palette or grayscale mask")


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Object pixels whose 4-neighbourhood holds another id: (T, H, W) -> bool (T, H, W)."""
    edge = np.zeros(labels.shape, dtype=bool)
    diff_y = labels[:, 1:] != labels[:, :-1]
    diff_x = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:] |= diff_y
    edge[:, :-1] |= diff_y
    edge[:, :, 1:] |= diff_x
    edge[:, :, :-1] |= diff_x
    return edge & (labels > 0)


def overlay_frames(frames: Any, labels: Any, palette: Sequence[int] | None = None, alpha: float = 0.5) -> np.ndarray:
    """Blend each object's colour over the frames, with its boundary drawn in full colour.

    Args:
        frames: uint8 (T, 3, H, W); labels: int (T, H, W) ids 0..255 (0, background, stays as is).
    Returns:
        uint8 (T, H, W, 3).
    """
    frames = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if frames.ndim != 4 or frames.shape[1] != 3 or labels.shape != (frames.shape[0], *frames.shape[2:]):
        raise ValueError(f"expected frames (T, 3, H, W) and labels (T, H, W), got {frames.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"ids must lie in 0..255, got {labels.min()}..{labels.max()}")
    rgb = frames.transpose(0, 2, 3, 1).astype(np.float32)  # (T, H, W, 3)
    colour = _palette_rgb(palette)[labels].astype(np.float32)  # (T, H, W, 3)
    mix = np.where((labels > 0)[..., None], (1 - alpha) * rgb + alpha * colour, rgb)
    mix = np.where(_boundary(labels)[..., None], colour, mix)
    return np.clip(np.round(mix), 0, 255).astype(np.uint8)


def write_overlay(
    frames: Any,
    labels: Any,
    path: str | Path,
    palette: Sequence[int] | None = None,
    fps: float = 10,
    alpha: float = 0.5,
) -> Path:
    """Write the frames with their masks overlaid (see ``overlay_frames``) as a video; returns the path.

    ``.mp4``: H.264 (libx264, yuv420p) through PyAV, the frame padded at the bottom / right to even
    sides, which 4:2:0 chroma needs. ``.gif``: an animated GIF through PIL, looping.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: write an .mp4 or a .gif")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    video = overlay_frames(frames, labels, palette, alpha)  # (T, H, W, 3)
    if len(video) == 0:
        raise ValueError("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in video]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    import av

    H, W = video.shape[1:3]
    video = np.pad(video, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        for image in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path
