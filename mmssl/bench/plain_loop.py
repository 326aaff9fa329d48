"""Plain training loops, the peers of the bench's learning rows: SimCLR (arXiv:2002.05709), BYOL
(arXiv:2006.07733), SimSiam (arXiv:2011.10566), MoCo v2 (arXiv:2003.04297), SwAV (arXiv:2006.09882,
multi-crop, no queue), RotNet (arXiv:1803.07728), Barlow Twins (arXiv:2103.03230), VICReg
(arXiv:2105.04906) and DINO (arXiv:2104.14294, multi-crop), each written out here with the settings of
the library's task.

What a careful user writes without a library: the whole dataset is one uint8 tensor on the device,
a batch is a draw of indices from it, the views are made on the whole batch with torch ops
(``affine_grid`` crop and flip, brightness / contrast / saturation / hue jitter, grayscale, Gaussian
blur, solarization), and the loss, heads, momentum networks and AdamW step are written out here. No
DataLoader, no library code but the encoder builder (the network is the one the task's encoder spec
describes) and, outside this module, the kNN measurement. Each view's colour recipe is a ``Colour``:
the bench gives a peer its task's (``Colour.of`` each view group's settings), so that a row compares
pipelines rather than augmentations; without one a peer reads SimCLR's distortion without hue, blur or
solarization (``SIMCLR_COLOUR``), as the bench's rows before 2026-12-06 did. RotNet's views are crops
and flips only, as its task's. The crop is the task's sampler too (``views.N.crop``: torchvision's
whole-pixel boxes with rejection, or a continuous box clipped to the image; ``crop_samplers``); without
one a peer crops continuously, as every peer did before 2026-12-06 (later).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmssl.bench.peers import MEAN, STD
from mmssl.encoders.io import build_encoder
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


@dataclasses.dataclass(frozen=True)
class Colour:
    """A view's colour recipe: with ``jitter_prob`` brightness, contrast and saturation factors uniform in
    [1 - x, 1 + x] and a hue shift uniform in [-hue, hue] turns of the colour wheel (applied in that
    order), then grayscale with ``gray_prob``, a Gaussian blur with ``blur_prob`` (sigma uniform in
    [blur_sigma_min, blur_sigma_max] output pixels, an odd kernel of about a tenth of the side, at least
    3) and solarization (1 - x at or above ``solarize_threshold``) with ``solarize_prob``."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5

    @classmethod
    def of(cls, view: object) -> Colour:
        """The recipe of a task's view group (any object with these fields, e.g. its ``ViewSettings``)."""
        return cls(**{f.name: getattr(view, f.name) for f in dataclasses.fields(cls)})


SIMCLR_COLOUR = Colour()  # SimCLR's distortion without hue: the peers' views before they read their task's


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> the same with every pixel's hue turned by shift (B,) of the colour
    wheel, saturation and value kept: RGB -> HSV -> RGB."""
    value, _ = x.max(dim=1)  # (B, H, W)
    chroma = value - x.min(dim=1).values
    sat = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    r, g, b = ((value - c) / chroma.clamp_min(1e-12) for c in x.unbind(1))  # distances from the max channel
    sector = torch.where(x[:, 0] == value, b - g, torch.where(x[:, 1] == value, 2 + r - b, 4 + g - r))
    hue = torch.where(chroma > 0, sector / 6, torch.zeros_like(sector))
    hue = torch.remainder(hue + shift[:, None, None], 1.0) * 6
    i = hue.floor()
    f = hue - i
    p, q, t = value * (1 - sat), value * (1 - sat * f), value * (1 - sat * (1 - f))
    i = i.long().remainder(6)[:, None]  # (B, 1, H, W): which of the six sectors
    choices = {0: (value, t, p), 1: (q, value, p), 2: (p, value, t), 3: (p, q, value), 4: (t, p, value),
               5: (value, p, q)}
    out = torch.zeros_like(x)
    for k, rgb in choices.items():
        out = torch.where(i == k, torch.stack(rgb, dim=1), out)
    return out


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> Gaussian-blurred with sigma (B,) per image, separable, reflected borders."""
    B, C, H, W = x.shape
    size = max(3, int(0.1 * H) // 2 * 2 + 1)
    taps = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    k = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (B C, size)
    y = F.pad(x.reshape(1, B * C, H, W), [size // 2] * 4, mode="reflect")
    y = F.conv2d(F.conv2d(y, k[:, None, :, None], groups=B * C), k[:, None, None, :], groups=B * C)
    return y.reshape(B, C, H, W)


CROPS = ("continuous", "torchvision")  # the peers' crop samplers, named as the tasks' ``views.N.crop``


def _pixel_boxes(B: int, H: int, W: int, min_scale: float, max_scale: float,
                 rand: Callable[..., torch.Tensor], tries: int = 10) -> tuple[torch.Tensor, ...]:
    """RandomResizedCrop's sampler for B images of H x W px: of ``tries`` boxes in whole pixels (area
    share uniform in [min_scale, max_scale], log aspect uniform in [log 3/4, log 4/3]) the first that
    fits, placed at a uniform whole-pixel offset; if none fits, the whole image trimmed to the nearest
    aspect in [3/4, 4/3], centred. Returns (w, h, cx, cy) as shares of the side and centres in [-1, 1]."""
    area = H * W * (min_scale + (max_scale - min_scale) * rand(B, tries))
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand(B, tries))
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first box that fits, 0 when none does
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    left, top = (rand(B) * (W - w + 1)).floor(), (rand(B) * (H - h + 1)).floor()
    fw, fh = min(W, round(H * 4 / 3)), min(H, round(W * 4 / 3))
    ok = fits.any(dim=1)
    w, h = torch.where(ok, w, float(fw)), torch.where(ok, h, float(fh))
    left, top = torch.where(ok, left, float((W - fw) // 2)), torch.where(ok, top, float((H - fh) // 2))
    return w / W, h / H, (2 * left + w) / W - 1, (2 * top + h) / H - 1


def batch_views(images: torch.Tensor, size: int, min_scale: float, gen: torch.Generator,
                colour: Colour | None = SIMCLR_COLOUR, max_scale: float = 1.0, crop: str = "continuous") -> torch.Tensor:
    """One view of every image: uint8 (B, 3, H, W) -> normalised float32 (B, 3, size, size).

    Random resized crop (area share min_scale..max_scale, aspect 3/4..4/3) and a horizontal flip in one
    affine grid; then ``colour``'s recipe, or nothing more with None. A recipe without hue, blur or
    solarization draws exactly what ``SIMCLR_COLOUR`` did before those existed. ``crop``: "continuous",
    one box in fractions of a pixel with each side clipped to the image, or "torchvision", whole-pixel
    boxes rejected when they do not fit (``_pixel_boxes``).
    """
    B, dev = len(images), images.device
    if crop not in CROPS:
        raise ValueError(f"crop is one of {', '.join(CROPS)}, not {crop!r}")

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=dev)

    def chance(p: float) -> torch.Tensor:
        return rand(B, 1, 1, 1) < p

    if crop == "torchvision":
        w, h, cx, cy = _pixel_boxes(B, images.shape[2], images.shape[3], min_scale, max_scale, rand)
    else:
        area = min_scale + (max_scale - min_scale) * rand(B)
        aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand(B))
        w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # shares of the side
        cx, cy = (1 - w) * (2 * rand(B) - 1), (1 - h) * (2 * rand(B) - 1)  # centres in [-1, 1] coordinates
    flip = torch.where(rand(B) < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [B, 3, size, size], align_corners=False)
    x = F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if colour is not None:
        c = colour
        jitter = chance(c.jitter_prob)
        b, k, s = (torch.where(jitter, max(0.0, 1 - x_) + (1 + x_ - max(0.0, 1 - x_)) * rand(B, 1, 1, 1), 1.0)
                   for x_ in (c.brightness, c.contrast, c.saturation))
        x = (x * b).clamp(0, 1)
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * k + mean).clamp(0, 1)
        g = _gray(x)
        x = ((x - g) * s + g).clamp(0, 1)
        if c.hue > 0:
            shift = torch.where(jitter.flatten(), c.hue * (2 * rand(B) - 1), 0.0)
            x = _hue_shift(x, shift)
        x = torch.where(chance(c.gray_prob), _gray(x).expand_as(x), x)
        if c.blur_prob > 0:
            sigma = c.blur_sigma_min + (c.blur_sigma_max - c.blur_sigma_min) * rand(B)
            x = torch.where(chance(c.blur_prob), _blur(x, sigma), x)
        if c.solarize_prob > 0:
            x = torch.where(chance(c.solarize_prob), torch.where(x >= c.solarize_threshold, 1 - x, x), x)
    return (x - x.new_tensor(MEAN)[:, None, None]) / x.new_tensor(STD)[:, None, None]


def embed(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features (B, D) of images x."""
    return encoder.pool(encoder.forward_features(x))


def head(sizes: list[int], last_bn: bool = False, batch_norm: bool = True) -> nn.Sequential:
    """Linear layers of widths sizes[0] -> ... -> sizes[-1], BatchNorm (optional) and ReLU between them."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        mods.append(nn.Linear(a, b, bias=not last_bn if last else not batch_norm))
        if not last:
            mods += [nn.BatchNorm1d(b), nn.ReLU()] if batch_norm else [nn.ReLU()]
    if last_bn:
        mods.append(nn.BatchNorm1d(sizes[-1], affine=False))
    return nn.Sequential(*mods)


@torch.no_grad()
def follow(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(tau).add_(o.detach(), alpha=1 - tau)


class PlainSimCLR(nn.Module):
    """The encoder ``build_encoder(spec)`` gives, a 2-layer projector (Linear, BatchNorm, ReLU,
    Linear) and NT-Xent. ``forward(v0, v1)``: two views (B, 3, S, S) -> the loss (scalar)."""

    num_views, colour = 2, True

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, temperature: float):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_hidden, proj_dim])
        self.temperature = temperature

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.projector(embed(self.encoder, torch.cat([v0, v1]))).chunk(2)
        return nt_xent(z0, z1, self.temperature)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, z) averaged over the batch, z treated as a constant (the stop-gradient)."""
    return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1).mean()


class PlainBYOL(nn.Module):
    """BYOL: online encoder, projector (Linear, BN, ReLU, Linear) and predictor; a target copy of the
    encoder and projector moved by an EMA whose rate follows the paper's cosine from base_momentum to 1
    over ``total_steps``; the symmetric loss 2 - 2 cos(p, t) of each view against the other's target."""

    num_views, colour = 2, True

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, pred_hidden: int, base_momentum: float,
                 total_steps: int):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_hidden, proj_dim])
        self.predictor = head([proj_dim, pred_hidden, proj_dim])
        self.target = copy.deepcopy(nn.ModuleList([self.encoder, self.projector])).requires_grad_(False)
        self.base_momentum, self.total_steps = base_momentum, total_steps

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        x = torch.cat([v0, v1])
        p0, p1 = self.predictor(self.projector(embed(self.encoder, x))).chunk(2)
        with torch.no_grad():
            t0, t1 = self.target[1](embed(self.target[0], x)).chunk(2)
        return 4 + 2 * negative_cosine(p0, t1) + 2 * negative_cosine(p1, t0)

    def after_step(self, step: int) -> None:
        progress = min(step / max(self.total_steps, 1), 1.0)
        tau = 1 - (1 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2
        follow(self.target, nn.ModuleList([self.encoder, self.projector]), tau)


class PlainSimSiam(nn.Module):
    """SimSiam: a 3-layer projector with BatchNorm on every layer (the last without affine), a
    bottleneck predictor, and the symmetric negative cosine against the other view's stopped projection."""

    num_views, colour = 2, True

    def __init__(self, spec: dict, proj_dim: int, pred_hidden: int):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_dim, proj_dim, proj_dim], last_bn=True)
        self.predictor = head([proj_dim, pred_hidden, proj_dim])

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        z = self.projector(embed(self.encoder, torch.cat([v0, v1])))
        p0, p1 = self.predictor(z).chunk(2)
        z0, z1 = z.chunk(2)
        return (negative_cosine(p0, z1) + negative_cosine(p1, z0)) / 2


class PlainBarlowTwins(nn.Module):
    """Barlow Twins: a 3-layer projector (Linear, BatchNorm, ReLU twice, then Linear); each projection
    dimension standardised over the batch (biased variance + eps, as BatchNorm), the cross-correlation
    of the two views' projections pulled to the identity: sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2,
    times ``scale_loss``."""

    num_views, colour = 2, True

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, lambd: float, scale_loss: float):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_hidden, proj_hidden, proj_dim])
        self.lambd, self.scale_loss = lambd, scale_loss

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        z0, z1 = (F.batch_norm(z, None, None, training=True, eps=1e-5)
                  for z in self.projector(embed(self.encoder, torch.cat([v0, v1]))).chunk(2))
        c = z0.T @ z1 / len(z0)  # (P, P)
        off = ~torch.eye(len(c), dtype=torch.bool, device=c.device)
        return self.scale_loss * ((c.diagonal() - 1).pow(2).sum() + self.lambd * c[off].pow(2).sum())


class PlainVICReg(nn.Module):
    """VICReg: a 3-layer expander (Linear, BatchNorm, ReLU twice, then Linear); sim_coeff x the mean
    squared distance between the two views' embeddings, std_coeff x each view's mean hinge
    relu(gamma - sqrt(var + eps)) over dimensions (unbiased variance), cov_coeff x each view's squared
    off-diagonal covariances / D (the paper's eq. 6, the variance term not halved)."""

    num_views, colour = 2, True

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, sim_coeff: float, std_coeff: float,
                 cov_coeff: float, gamma: float, eps: float):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_hidden, proj_hidden, proj_dim])
        self.coeffs, self.gamma, self.eps = (sim_coeff, std_coeff, cov_coeff), gamma, eps

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        z0, z1 = self.projector(embed(self.encoder, torch.cat([v0, v1]))).chunk(2)
        spread = shared = 0.0
        for z in (z0, z1):
            spread = spread + F.relu(self.gamma - torch.sqrt(z.var(dim=0) + self.eps)).mean()
            zc = z - z.mean(dim=0)
            cov = zc.T @ zc / (len(z) - 1)  # (D, D)
            shared = shared + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / z.shape[1]
        sim, std, cov_w = self.coeffs
        return sim * F.mse_loss(z0, z1) + std * spread + cov_w * shared


class PlainMoCo(nn.Module):
    """MoCo v2: a query encoder and projector (Linear, ReLU, Linear), a key copy moved by an EMA of
    constant ``momentum``, a queue of ``queue_size`` keys, InfoNCE at ``temperature``; with
    ``shuffle_bn`` each view is encoded in groups of about that many images, each normalised by its own
    BatchNorm statistics, the keys' groups drawn from a random permutation of the batch (shuffle-BN);
    with ``symmetric`` both views serve once as the query."""

    num_views, colour = 2, True

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, queue_size: int, momentum: float,
                 temperature: float, symmetric: bool, shuffle_bn: int):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_hidden, proj_dim], batch_norm=False)
        self.key = copy.deepcopy(nn.ModuleList([self.encoder, self.projector])).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.pointer = 0
        self.momentum, self.temperature, self.symmetric, self.shuffle_bn = momentum, temperature, symmetric, shuffle_bn
        self.pending: list[torch.Tensor] = []

    def encode(self, encoder: nn.Module, views: list[torch.Tensor], shuffle: bool) -> list[torch.Tensor]:
        """Pooled features of each view: in one pass without shuffle-BN, else view by view in groups."""
        if not self.shuffle_bn:
            return list(embed(encoder, torch.cat(views)).chunk(len(views)))
        out = []
        for v in views:
            order = torch.randperm(len(v), device=v.device) if shuffle else torch.arange(len(v), device=v.device)
            h = torch.cat([embed(encoder, part) for part in v[order].tensor_split(max(1, len(v) // self.shuffle_bn))])
            out.append(h[torch.argsort(order)])
        return out

    def info_nce(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.T], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    def forward(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        queries, keys = ([v0, v1], [v1, v0]) if self.symmetric else ([v0], [v1])
        q = F.normalize(self.projector(torch.cat(self.encode(self.encoder, queries, False))), dim=1).chunk(len(queries))
        with torch.no_grad():
            k = F.normalize(self.key[1](torch.cat(self.encode(self.key[0], keys, True))), dim=1).chunk(len(keys))
        self.pending = list(k)
        return sum(self.info_nce(qi, ki) for qi, ki in zip(q, k)) / len(q)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        follow(self.key, nn.ModuleList([self.encoder, self.projector]), self.momentum)
        k = torch.cat(self.pending).to(self.queue.dtype)  # the step's keys (bf16 under autocast) replace the oldest
        self.queue[(self.pointer + torch.arange(len(k), device=k.device)) % len(self.queue)] = k
        self.pointer = (self.pointer + len(k)) % len(self.queue)
        self.pending = []


@torch.no_grad()
def sinkhorn_codes(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp (its Algorithm 1): scores (B, K) -> codes (B, K), every prototype given the
    same mass over the batch, every sample's row summing to 1."""
    q = torch.exp(scores.float() / eps).T  # (K, B)
    q /= q.sum()
    K, B = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True) * K
        q /= q.sum(dim=0, keepdim=True) * B
    return (q * B).T


class PlainSwAV(nn.Module):
    """SwAV without a queue: crops of the sizes and scales in ``crops`` [(size, min_scale, max_scale)],
    the first ``global_crops`` of them global; crops of one size encoded together; a projector (Linear,
    BatchNorm, ReLU, Linear) onto the unit sphere, prototypes renormalised after every step, each global
    crop's Sinkhorn codes predicted from every other crop at ``temperature``."""

    colour = True

    def __init__(self, spec: dict, proj_hidden: int, proj_dim: int, num_prototypes: int, temperature: float,
                 eps: float, sinkhorn_iters: int, projector_bn: bool, crops: list[tuple[int, float, float]],
                 global_crops: int):
        if any(a[0] < b[0] for a, b in itertools.pairwise(crops)):
            raise ValueError(f"PlainSwAV needs its crops listed largest first (the global ones), got {crops}")
        super().__init__()
        self.encoder = build_encoder(spec)
        self.projector = head([self.encoder.embed_dim, proj_hidden, proj_dim], batch_norm=projector_bn)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.after_step(0)
        self.crops, self.num_views, self.global_crops = crops, len(crops), global_crops
        self.temperature, self.eps, self.sinkhorn_iters = temperature, eps, sinkhorn_iters

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        sizes = sorted({v.shape[-1] for v in views}, reverse=True)  # the global size first
        feats = {s: embed(self.encoder, torch.cat([v for v in views if v.shape[-1] == s])) for s in sizes}
        z = F.normalize(self.projector(torch.cat([feats[s] for s in sizes])), dim=1)
        scores = (z @ self.prototypes.weight.T).chunk(len(views))  # crops in the order of ``views``
        terms = [-(sinkhorn_codes(scores[i].detach(), self.eps, self.sinkhorn_iters)
                   * F.log_softmax(scores[j] / self.temperature, dim=1)).sum(dim=1).mean()
                 for i in range(self.global_crops) for j in range(len(views)) if j != i]
        return sum(terms) / len(terms)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))


class DINOHeadPlain(nn.Module):
    """DINO's head: Linear layers to ``hidden_dim`` (GELU between, BatchNorm before it with ``use_bn``) and a
    ``bottleneck_dim`` output, weights trunc-normal(0.02) and zero biases; the output L2-normalised, then
    a last layer w_k = g_k v_k / ||v_k|| (g fixed at 1 with ``norm_last_layer``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int,
                 use_bn: bool, norm_last_layer: bool):
        super().__init__()
        widths = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        mods: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            linear = nn.Linear(a, b)
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
            mods += [linear, *([nn.BatchNorm1d(b)] if use_bn else []), nn.GELU()]
        self.mlp = nn.Sequential(*mods[:-1])  # no GELU after the bottleneck
        self.last_v = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.kaiming_uniform_(self.last_v, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.last_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def forward(self, h: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        v = self.last_v.detach() if frozen else self.last_v
        return F.normalize(self.mlp(h), dim=1) @ (self.last_g * F.normalize(v, dim=1)).T


class PlainDINO(nn.Module):
    """DINO with multi-crop: crops of the sizes and scales in ``crops`` [(size, min_scale, max_scale)], the
    first ``global_crops`` global; crops of one size encoded together. The teacher, an EMA copy of the
    encoder and head whose momentum rises on a cosine from ``momentum_teacher`` to 1 over ``total_steps``,
    sees the global crops; its logits are centred (an EMA, ``center_momentum``, of their batch mean) and
    sharpened at a temperature rising linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_steps``; every student crop at ``student_temp`` is trained on every other global
    crop's target (cross-entropy). The last layer is frozen for ``freeze_last_layer_steps`` steps. With
    ``centering="sinkhorn"`` the targets are instead ``sinkhorn_codes`` of the global crops' logits at that
    temperature (DINOv2's Sinkhorn-Knopp centring) and the centre stays where it is."""

    colour = True

    def __init__(self, spec: dict, head_sizes: dict, temps: tuple[float, float, float], warmup_teacher_temp_steps: int,
                 center_momentum: float, momentum_teacher: float, freeze_last_layer_steps: int,
                 crops: list[tuple[int, float, float]], global_crops: int, total_steps: int,
                 centering: str = "ema", sinkhorn_iters: int = 3):
        """``head_sizes``: DINOHeadPlain's out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn and
        norm_last_layer; ``temps``: (student_temp, teacher_temp, warmup_teacher_temp)."""
        if any(a[0] < b[0] for a, b in itertools.pairwise(crops)):
            raise ValueError(f"PlainDINO needs its crops listed largest first (the global ones), got {crops}")
        super().__init__()
        self.encoder = build_encoder(spec)
        self.head = DINOHeadPlain(self.encoder.embed_dim, **head_sizes)
        self.teacher = copy.deepcopy(nn.ModuleList([self.encoder, self.head])).requires_grad_(False)
        self.register_buffer("center", torch.zeros(head_sizes["out_dim"]))
        self.crops, self.num_views, self.global_crops, self.total_steps = crops, len(crops), global_crops, total_steps
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = temps
        self.warmup_steps, self.center_momentum = warmup_teacher_temp_steps, center_momentum
        self.momentum_teacher, self.freeze_steps = momentum_teacher, freeze_last_layer_steps
        self.steps, self.pending = 0, None
        self.centering, self.sinkhorn_iters = centering, sinkhorn_iters

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        sizes = sorted({v.shape[-1] for v in views}, reverse=True)
        feats = torch.cat([embed(self.encoder, torch.cat([v for v in views if v.shape[-1] == s])) for s in sizes])
        student = F.log_softmax(self.head(feats, frozen=self.steps < self.freeze_steps) / self.student_temp,
                                dim=1).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher[1](embed(self.teacher[0], torch.cat(views[:self.global_crops])))
            temp = self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * min(
                1.0, self.steps / max(self.warmup_steps, 1))
            if self.centering == "sinkhorn":
                targets = sinkhorn_codes(teacher, temp, self.sinkhorn_iters).chunk(self.global_crops)
            else:
                self.pending = teacher.mean(dim=0)
                targets = F.softmax((teacher - self.center) / temp, dim=1).chunk(self.global_crops)
        terms = [-(q * student[v]).sum(dim=1).mean() for i, q in enumerate(targets)
                 for v in range(len(views)) if v != i]
        return sum(terms) / len(terms)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        progress = min(step / max(self.total_steps, 1), 1.0)
        tau = 1 - (1 - self.momentum_teacher) * (math.cos(math.pi * progress) + 1) / 2
        follow(self.teacher, nn.ModuleList([self.encoder, self.head]), tau)
        if self.pending is not None:
            self.center.mul_(self.center_momentum).add_(self.pending, alpha=1 - self.center_momentum)
            self.pending = None
        self.steps = step


class PlainRotNet(nn.Module):
    """RotNet: every image rotated by 0, 90, 180 and 270 degrees, a linear head on the pooled features
    names the rotation (cross-entropy)."""

    num_views, colour = 1, False

    def __init__(self, spec: dict):
        super().__init__()
        self.encoder = build_encoder(spec)
        self.head = nn.Linear(self.encoder.embed_dim, 4)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.rot90(v, r, dims=(2, 3)) for r in range(4)])
        labels = torch.arange(4, device=v.device).repeat_interleave(len(v))
        return F.cross_entropy(self.head(embed(self.encoder, x)), labels)


def rate(step: int, lr: float, warmup_steps: int, cosine_steps: int = 0, min_lr_ratio: float = 0.01,
         progress: float | None = None) -> float:
    """The rate of optimizer step ``step`` (from 0): a linear warm-up over ``warmup_steps``, then ``lr``,
    or with ``cosine_steps`` half a cosine from the warm-up's end to ``min_lr_ratio * lr`` at that step;
    ``progress`` (0 to 1, e.g. the share of the training seconds spent since the warm-up) places a step
    on the cosine instead of its index."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if progress is None and cosine_steps:
        progress = (step - warmup_steps) / max(1, cosine_steps - warmup_steps)
    if progress is None:
        return lr
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress)))))


def peer_colours(model: nn.Module) -> list[Colour | None]:
    """The colour recipe of each view ``model`` reads: its own ``view_colours`` where it has them (the
    bench gives a peer its task's), else ``SIMCLR_COLOUR`` for a peer that reads colour-distorted views
    and None (crop and flip only) for one that does not."""
    return getattr(model, "view_colours", None) or [SIMCLR_COLOUR if model.colour else None] * model.num_views


def peer_samplers(model: nn.Module) -> list[str]:
    """The crop sampler of each view ``model`` reads: its own ``crop_samplers`` where it has them (the
    bench gives a peer its task's ``views.N.crop``), else "continuous" for every view."""
    return getattr(model, "crop_samplers", None) or ["continuous"] * model.num_views


def peer_crops(model: nn.Module, size: int, min_scale: float) -> list[tuple[int, float, float]]:
    """The (size, min_scale, max_scale) of each view ``model`` reads: its own ``crops`` list where it
    has one (multi-crop), else ``model.num_views`` crops of ``size`` px from ``min_scale``-100%."""
    return getattr(model, "crops", None) or [(size, min_scale, 1.0)] * model.num_views


def train_plain(model: nn.Module, images: torch.Tensor, *, batch_size: int, lr: float, weight_decay: float,
                warmup_steps: int, size: int, min_scale: float, at_seconds: list[float] | None = None,
                measure: Callable[[nn.Module], float], seed: int = 0, at_steps: list[int] | None = None,
                cosine_steps: int = 0, cosine_seconds: float = 0.0, min_lr_ratio: float = 0.01,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
    """Train until the training clock passes the last of ``at_seconds``, measuring the encoder with
    ``measure`` (in eval mode, without gradients, the clock paused) the first time it passes each;
    or, with ``at_steps`` instead, after each of those optimizer steps.

    ``model`` is one of the peers above: ``model(*views)`` gives the loss for ``model.num_views`` views
    of a batch (each ``size`` px from crops of ``min_scale``-100%, or as ``model.crops`` lists), and
    ``model.after_step(step)``, where it has one, runs after each optimizer step.
    AdamW at ``lr`` after a linear warm-up, then constant, or along a half cosine from the end of the
    warm-up to ``min_lr_ratio * lr`` at step ``cosine_steps`` (the library's schedule) or at
    ``cosine_seconds`` of the training clock (the same shape for a run that stops by the clock);
    epochs of random batches, the last partial one dropped. The forward pass and ``measure`` run
    under ``autocast`` (e.g. bf16, as the library's under accelerate's mixed precision); the views before it.
    Returns {"points": [{"seconds" (with at_seconds), "at_s", "knn_top1", "step", "images"}], "train_s",
    "images"}.
    """
    dev = images.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    if (at_seconds is None) == (at_steps is None):
        raise ValueError("give either at_seconds or at_steps")
    by_step = at_steps is not None
    pending, points = sorted(at_steps if by_step else at_seconds), []
    clock, step, seen, order, pos, warm_clock = 0.0, 0, 0, None, len(images), 0.0
    crops, colours, samplers = peer_crops(model, size, min_scale), peer_colours(model), peer_samplers(model)
    if not len(crops) == len(colours) == len(samplers):
        raise ValueError(f"{type(model).__name__} reads {len(crops)} views but has {len(colours)} colour recipes "
                         f"and {len(samplers)} crop samplers")
    model.train()
    while pending:
        start = time.perf_counter()
        if pos + batch_size > len(images):
            order, pos = torch.randperm(len(images), generator=gen, device=dev), 0
        x = images[order[pos:pos + batch_size]]
        pos += batch_size
        if step == warmup_steps:
            warm_clock = clock
        progress = None if not cosine_seconds or step < warmup_steps else (
            (clock - warm_clock) / max(1e-9, cosine_seconds - warm_clock))
        with torch.no_grad():
            views = [batch_views(x, s, lo, gen, colour=c, max_scale=hi, crop=k)
                     for (s, lo, hi), c, k in zip(crops, colours, samplers)]
        for group in opt.param_groups:
            group["lr"] = rate(step, lr, warmup_steps, cosine_steps, min_lr_ratio, progress)
        with autocast():
            loss = model(*views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step(step + 1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        clock += time.perf_counter() - start
        step, seen = step + 1, seen + batch_size
        while pending and (step if by_step else clock) >= pending[0]:
            target = pending.pop(0)
            model.eval()
            with torch.no_grad(), autocast():
                acc = measure(model.encoder)
            model.train()
            points.append({**({} if by_step else {"seconds": target}), "at_s": round(clock, 3), "knn_top1": acc,
                           "step": step, "images": seen})
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
