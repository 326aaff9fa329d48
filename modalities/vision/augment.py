"""Augmentation recipes for self-supervised image objectives (torchvision.transforms.v2).

Every recipe is called as ``recipe(img, gen)`` with a uint8 RGB tensor (3, H, W) and the item's own
``torch.Generator`` (mmssl.data seeds one per item), and returns float32 tensors (3, size, size)
normalised with MEAN / STD: one tensor for single-view recipes, a list for multi-view ones.
torchvision draws from the global torch RNG, so ``run_seeded`` reseeds it from ``gen`` inside a
fork and restores it afterwards: the views depend only on ``gen``, never on worker scheduling, and
the caller's random stream is left untouched.

Random resized crops and EvalView resample to the requested size whatever the input size, so
an image smaller than the crop (say 8x8 for size 32) is upsampled rather than rejected.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode, v2

MEAN = (0.485, 0.456, 0.406)  # ImageNet channel statistics, the convention most checkpoints expect
STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) images (..., 3, H, W) -> float32 (x - MEAN) / STD."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
    return (x - mean[:, None, None]) / std[:, None, None]


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of normalize, clamped to [0, 1] for plotting: (..., 3, H, W) -> same shape."""
    mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
    return (x.float() * std[:, None, None] + mean[:, None, None]).clamp(0, 1)


def run_seeded(transform: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """transform(img) with the global CPU RNG seeded from ``gen`` (one draw), then restored."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        # default_generator rather than torch.manual_seed: the latter also reseeds CUDA
        # generators, which fork_rng(devices=[]) would not restore.
        torch.default_generator.manual_seed(seed)
        return transform(img)


def _check(img: torch.Tensor) -> None:
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a uint8 image (3, H, W), got {img.dtype} {tuple(img.shape)}")


def blur_kernel(size: int) -> int:
    """Odd Gaussian kernel of ~10% of the crop side, at least 3 (SimCLR: 23 px at 224)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _crop(size: int, scale: tuple[float, float], interpolation=InterpolationMode.BILINEAR) -> v2.Transform:
    # Resamples to size x size from any crop, so inputs smaller than the crop are upsampled.
    return v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True)


def _colour(size: int, jitter: tuple[float, float, float, float], jitter_p: float, gray_p: float,
            blur_p: float, solarize_p: float = 0.0) -> list[v2.Transform]:
    ops = [v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p), v2.RandomGrayscale(p=gray_p)]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # uint8 scale: mid-grey
    return ops


def _finish(ops: list[v2.Transform]) -> v2.Compose:
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def _simclr_jitter(strength: float) -> tuple[float, float, float, float]:
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


class _Views:
    """Applies each of ``self.transforms`` to the image, each with its own seed drawn from ``gen``."""

    transforms: list[v2.Compose]

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        _check(img)
        return [run_seeded(t, img, gen) for t in self.transforms]


class SimCLRViews(_Views):
    """Two views from one distribution (SimCLR, arXiv:2002.05709): random resized crop, flip, colour
    jitter (strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s; s = 0.5 gives 0.4 / 0.1)
    with p = jitter_p, grayscale p = 0.2, Gaussian blur (sigma 0.1-2) with p = 0.5 when ``blur``.
    Returns [v0, v1], each float32 (3, size, size)."""

    def __init__(self, size: int, min_scale: float = 0.08, strength: float = 0.5, jitter_p: float = 0.8,
                 blur: bool = True, flip: bool = True):
        ops = [_crop(size, (min_scale, 1.0)), v2.RandomHorizontalFlip(0.5 if flip else 0.0),
               *_colour(size, _simclr_jitter(strength), jitter_p, 0.2, 0.5 if blur else 0.0)]
        self.transforms = [_finish(ops)] * 2


class BYOLViews(_Views):
    """The asymmetric pair of BYOL (arXiv:2006.07733): both views crop, flip, jitter (0.4, 0.4, 0.2,
    0.1) with p = 0.8 and grayscale with p = 0.2; view 1 always blurs and never solarizes, view 2 blurs
    with p = 0.1 and solarizes with p = 0.2. ``blur=False`` drops the blur from both, as CIFAR-sized
    recipes do (solo-learn's). Returns [v1, v2], each float32 (3, size, size)."""

    def __init__(self, size: int, min_scale: float = 0.08, flip: bool = True, blur: bool = True):
        base = [_crop(size, (min_scale, 1.0)), v2.RandomHorizontalFlip(0.5 if flip else 0.0)]
        jitter = (0.4, 0.4, 0.2, 0.1)
        self.transforms = [_finish(base + _colour(size, jitter, 0.8, 0.2, blur_p=1.0 if blur else 0.0)),
                           _finish(base + _colour(size, jitter, 0.8, 0.2, blur_p=0.1 if blur else 0.0,
                                                  solarize_p=0.2))]


class MultiCropViews(_Views):
    """Multi-crop (SwAV, arXiv:2006.09882): 2 global crops of global_size (area share in global_scale)
    and num_local local crops of local_size (area share in local_scale), each with SimCLR's colour
    ops (blur with p = 0.5 unless ``blur=False``, as CIFAR-sized recipes drop it). Returns
    [g0, g1, l0, ..., l{num_local-1}]: float32 (3, global_size, global_size) then (3, local_size, local_size)."""

    def __init__(self, global_size: int, local_size: int, num_local: int,
                 global_scale: tuple[float, float] = (0.14, 1.0), local_scale: tuple[float, float] = (0.05, 0.14),
                 strength: float = 0.5, flip: bool = True, blur: bool = True):
        def view(size, scale):
            return _finish([_crop(size, scale), v2.RandomHorizontalFlip(0.5 if flip else 0.0),
                            *_colour(size, _simclr_jitter(strength), 0.8, 0.2, 0.5 if blur else 0.0)])

        self.transforms = [view(global_size, global_scale)] * 2 + [view(local_size, local_scale)] * num_local


class MAEView:
    """MAE's only augmentation (arXiv:2111.06377): bicubic random resized crop (area share
    min_scale..1) and a horizontal flip. Returns float32 (3, size, size)."""

    def __init__(self, size: int, min_scale: float = 0.2, flip: bool = True):
        self.transform = _finish([_crop(size, (min_scale, 1.0), InterpolationMode.BICUBIC),
                                  v2.RandomHorizontalFlip(0.5 if flip else 0.0)])

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        _check(img)
        return run_seeded(self.transform, img, gen)


class EvalView:
    """Deterministic view for probes and kNN: resize the shorter side to ``size`` (upsampling smaller
    images) and centre-crop. Returns float32 (3, size, size); ``gen`` is accepted and unused."""

    def __init__(self, size: int):
        self.transform = _finish([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        _check(img)
        return self.transform(img)
