"""A plain SimCLR training loop (arXiv:2002.05709): the peer of the bench's learning row.

What a careful user writes without a library: the whole dataset is one uint8 tensor on the device,
a batch is a draw of indices from it, both views are made on the whole batch with torch ops
(``affine_grid`` crop and flip, brightness / contrast / saturation jitter, grayscale), and the loss,
projector and AdamW step are written out here. No DataLoader, no library code but the encoder
builder (the network is the one the task's encoder spec describes) and, outside this module, the
kNN measurement. The views leave out the hue jitter of SimCLR's recipe (it needs an HSV round trip).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmssl.bench.peers import MEAN, STD
from mmssl.errors import DataError

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent on one process: each of the 2B embeddings must pick its other view out of the other
    2B - 1. z0, z1: (B, D). Returns the mean cross-entropy over the 2B anchors (scalar)."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    B = len(z0)
    positives = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)
    return F.cross_entropy(logits, positives)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> luma (B, 1, H, W)."""
    return torch.einsum("bchw,c->bhw", x, x.new_tensor(GRAY))[:, None]


def batch_views(images: torch.Tensor, size: int, min_scale: float, gen: torch.Generator) -> torch.Tensor:
    """One SimCLR view of every image: uint8 (B, 3, H, W) -> normalised float32 (B, 3, size, size).

    Random resized crop (area share min_scale..1, aspect 3/4..4/3, clipped to the image) and a
    horizontal flip in one affine grid; with p = 0.8 brightness, contrast and saturation factors
    in 0.6..1.4; grayscale with p = 0.2.
    """
    B, dev = len(images), images.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=dev)

    area = min_scale + (1 - min_scale) * rand(B)
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand(B))
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # shares of the side
    cx, cy = (1 - w) * (2 * rand(B) - 1), (1 - h) * (2 * rand(B) - 1)  # centres in [-1, 1] coordinates
    flip = torch.where(rand(B) < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [B, 3, size, size], align_corners=False)
    x = F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    jitter = rand(B, 1, 1, 1) < 0.8
    b, c, s = (torch.where(jitter, 0.6 + 0.8 * rand(B, 1, 1, 1), 1.0) for _ in range(3))
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    g = _gray(x)
    x = ((x - g) * s + g).clamp(0, 1)
    x = torch.where(rand(B, 1, 1, 1) < 0.2, _gray(x).expand_as(x), x)
    return (x - x.new_tensor(MEAN)[:, None, None]) / x.new_tensor(STD)[:, None, None]


class PlainSimCLR(nn.Module):
    """The encoder ``build_encoder(spec)`` gives, a 2-layer projector (Linear, BatchNorm, ReLU,
    Linear) and NT-Xent. ``forward(v0, v1)``: two views (B, 3, S, S) -> the loss (scalar)."""

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, temperature: float):
        super().__init__()
        from mmssl.encoders.io import build_encoder

        self.encoder = build_encoder(spec)
        self.projector = nn.Sequential(nn.Linear(self.encoder.embed_dim, proj_hidden, bias=False),
                                       nn.BatchNorm1d(proj_hidden), nn.ReLU(), nn.Linear(proj_hidden, proj_dim))
        self.temperature = temperature

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        h = self.encoder.pool(self.encoder.forward_features(torch.cat([v0, v1])))  # (2B, D)
        z0, z1 = self.projector(h).chunk(2)
        return nt_xent(z0, z1, self.temperature)


def train_plain(model: PlainSimCLR, images: torch.Tensor, *, batch_size: int, lr: float, weight_decay: float,
                warmup_steps: int, size: int, min_scale: float, at_seconds: list[float],
                measure: Callable[[nn.Module], float], seed: int = 0) -> dict:
    """Train until the training clock passes the last of ``at_seconds``, measuring the encoder with
    ``measure`` (in eval mode, without gradients, the clock paused) the first time it passes each.

    AdamW at ``lr`` after a linear warm-up; epochs of random batches, the last partial one dropped.
    Returns {"points": [{"seconds", "at_s", "knn_top1", "step", "images"}], "train_s", "images"}.
    """
    dev = images.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    pending, points = sorted(at_seconds), []
    clock, step, seen, order, pos = 0.0, 0, 0, None, len(images)
    model.train()
    while pending:
        start = time.perf_counter()
        if pos + batch_size > len(images):
            order, pos = torch.randperm(len(images), generator=gen, device=dev), 0
        x = images[order[pos:pos + batch_size]]
        pos += batch_size
        with torch.no_grad():
            v0, v1 = batch_views(x, size, min_scale, gen), batch_views(x, size, min_scale, gen)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps))
        loss = model(v0, v1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        clock += time.perf_counter() - start
        step, seen = step + 1, seen + batch_size
        while pending and clock >= pending[0]:
            model.eval()
            with torch.no_grad():
                acc = measure(model.encoder)
            model.train()
            points.append({"seconds": pending.pop(0), "at_s": round(clock, 3), "knn_top1": acc, "step": step,
                           "images": seen})
    return {"points": points, "train_s": clock, "images": seen}


def load_images(dataset: str, split: str, size: int) -> torch.Tensor:
    """A whole split as one uint8 tensor (N, 3, size, size): the embedded demo shapes for ``demo``,
    else ``DATASET/SPLIT/<class>/<image>`` read with PIL, the shorter side resized to ``size`` and
    centre-cropped (the plain loop holds every image at the crop size)."""
    if dataset == "demo":
        from mmssl.modalities.vision import open_images

        images = torch.from_numpy(open_images("demo", split).images).permute(0, 3, 1, 2).contiguous()
        return images if images.shape[-1] == size else F.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True).round().to(torch.uint8)
    from PIL import Image, ImageOps

    files = sorted(p for p in (Path(dataset) / split).glob("*/*") if p.is_file())
    if not files:
        raise DataError(f"{dataset}: no images in {split}/<class>/ for the plain loop")
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as img:
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.BILINEAR)
            out[i] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return out
