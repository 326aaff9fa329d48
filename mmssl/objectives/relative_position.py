"""Relative position, or context prediction (Doersch, Gupta & Efros, arXiv:1505.05192).

A 3x3 grid of square patches is laid on an image with a gap between neighbouring patches, and each
patch is jittered by a few pixels (the gap and the jitter keep lines and textures from running
across patch borders, a shortcut that needs no understanding of the content). A pair is the centre
patch and one of its 8 neighbours drawn uniformly; the label is the neighbour's place (``pairs`` > 1
pairs the centre with as many distinct neighbours, reusing its features). One shared encoder embeds
each patch, a per-patch fc layer (the paper's fc6) maps its pooled feature, and the
two are concatenated (late fusion) and go through fc7, fc8 and an 8-way classifier.

Chromatic aberration tells where in the lens a patch was, so colour alone could name positions;
the paper removes it in one of two ways: ``color_mode="project"`` projects every pixel onto the
plane orthogonal to the green-magenta axis (on the views' normalised values, whose channel scales
differ by under 3%), ``"drop"`` keeps one random channel per patch and
replaces the other two by Gaussian noise with a hundredth of that channel's standard deviation.
The paper found both about equal and shows colour dropping in its figures (as its released code
does), the default here. Each patch is then centred channel by channel and scaled to unit RMS, as
in the authors' released code, so that low-level statistics are a weaker cue.

The paper also downsamples a third of the patches to as little as 100 pixels against pixelation;
that is not done here (at demo scale a patch is smaller than that). Offsets, labels, channels kept
and noise are drawn from torch's generator (seeded by the trainer, restored on resume), as the
other image pretext objectives draw theirs.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std, mlp
from mmssl.objectives.tiles import crop_patches, grid_corners, standardize
from mmssl.registry import OBJECTIVES

COLOR_MODES = ("drop", "project", "none")
# Cells of the 3x3 grid (row-major) that label 0..7 names: every cell but the centre (4).
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
# The paper's green-magenta axis in RGB.
GREEN_MAGENTA = (-1.0, 2.0, -1.0)


@dataclasses.dataclass(frozen=True)
class RelativePositionSettings:
    """The paper's settings: 96 px patches 48 px apart, each jittered by up to 7 px, in images resized
    to 150-450 thousand pixels; fc6 of 4096 per patch, fc7 and fc8 of 4096 after the fusion."""

    patch_size: int = 96
    gap: int = 48  # pixels between neighbouring patches of the grid
    jitter: int = 7  # each patch moves by up to this many pixels along each axis
    # Neighbours paired with each centre patch, drawn without replacement: 1 is the paper's text; more
    # reuse the centre's features, as the released code pairs every two adjacent patches of a grid.
    pairs: int = 1
    color_mode: str = "drop"  # drop | project | none: against chromatic aberration
    drop_noise: float = 0.01  # std of a dropped channel's noise, in stds of the channel kept
    patch_dim: int = 4096  # fc6, per patch
    hidden: int = 4096  # fc7 and fc8, on the concatenated pair


def project_colors(patches: torch.Tensor) -> torch.Tensor:
    """(..., 3, h, w) -> the same with every pixel's RGB projected onto the plane orthogonal to the
    green-magenta axis b: x -> (I - b b^T / b^T b) x."""
    b = torch.tensor(GREEN_MAGENTA, device=patches.device, dtype=patches.dtype)
    A = torch.eye(3, device=patches.device, dtype=patches.dtype) - torch.outer(b, b) / b.dot(b)
    return torch.einsum("ij,...jhw->...ihw", A, patches)


def drop_colors(patches: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor, scale: float) -> torch.Tensor:
    """Colour dropping: patches (..., C, h, w) keep channel ``keep`` (...,); every other channel becomes
    ``noise`` (..., C, h, w), standard Gaussian, times ``scale`` times the kept channel's std over the patch."""
    kept = patches.gather(-3, keep[..., None, None, None].expand(*keep.shape, 1, *patches.shape[-2:]))
    sigma = kept.std(dim=(-2, -1), keepdim=True)  # (..., 1, 1, 1)
    is_kept = F.one_hot(keep, patches.shape[-3]).bool()[..., None, None]  # (..., C, 1, 1)
    return torch.where(is_kept, patches, noise * scale * sigma)


@OBJECTIVES.register("relative_position")
class RelativePosition(Objective):
    Settings: ClassVar[type] = RelativePositionSettings
    single_view = True

    def __init__(self, encoder: nn.Module, *, patch_size: int = 96, gap: int = 48, jitter: int = 7, pairs: int = 1,
                 color_mode: str = "drop", drop_noise: float = 0.01, patch_dim: int = 4096, hidden: int = 4096):
        super().__init__()
        if color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {', '.join(COLOR_MODES)}, not '{color_mode}'")
        if patch_size < 1 or gap < 0 or jitter < 0 or drop_noise < 0:
            raise ValueError(f"relative position needs patch_size >= 1, gap >= 0, jitter >= 0 and drop_noise >= 0, "
                             f"not {patch_size}, {gap}, {jitter}, {drop_noise}")
        if not 1 <= pairs <= len(NEIGHBOURS):
            raise ValueError(f"pairs (neighbours per centre patch) must be between 1 and {len(NEIGHBOURS)}, not {pairs}")
        self.encoder, self.patch_size, self.gap, self.jitter, self.pairs = encoder, patch_size, gap, jitter, pairs
        self.color_mode, self.drop_noise = color_mode, drop_noise
        self.register_buffer("neighbours", torch.tensor(NEIGHBOURS), persistent=False)
        self.fc6 = nn.Sequential(nn.Linear(encoder.embed_dim, patch_dim, bias=False), nn.BatchNorm1d(patch_dim),
                                 nn.ReLU(inplace=True))
        self.head = mlp(2 * patch_dim, hidden, len(NEIGHBOURS), layers=3)  # fc7, fc8, the 8-way fc9

    @property
    def span(self) -> int:
        """Side of the grid's square without jitter: three patches and two gaps."""
        return 3 * self.patch_size + 2 * self.gap

    def min_image_size(self) -> int:
        return self.span + 2 * self.jitter

    def positions(self, batch: int, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left pixels (B, 1 + P, 2) (row, col) of the centre patch and P = ``pairs`` neighbours, and
        their labels (B, P): neighbour i sits in cell ``NEIGHBOURS[labels[:, i]]``, distinct neighbours per
        image, drawn uniformly. The grid's corner is uniform over the places where every jittered patch
        stays inside the image."""
        j = self.jitter
        if min(height, width) < self.min_image_size():
            raise ValueError(f"relative position needs images of at least {self.min_image_size()} px (3 patches of "
                             f"{self.patch_size}, 2 gaps of {self.gap}, jitter {j} on each side), got {height}x{width}")
        origin = torch.stack([torch.randint(j, size - self.span - j + 1, (batch,), device=device)
                              for size in (height, width)], -1)  # (B, 2)
        labels = torch.rand(batch, len(NEIGHBOURS), device=device).argsort(1)[:, :self.pairs]  # (B, P)
        cells = torch.cat([torch.full_like(labels[:, :1], 4), self.neighbours.to(device)[labels]], 1)  # (B, 1 + P)
        corners = grid_corners(3, self.patch_size + self.gap, device)[cells]  # (B, 1 + P, 2)
        shake = torch.randint(-j, j + 1, corners.shape, device=device)
        return origin[:, None] + corners + shake, labels

    def cut(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) -> raw patches (B, 1 + P, C, p, p) (the centre first) and labels (B, P)."""
        starts, labels = self.positions(x.shape[0], x.shape[-2], x.shape[-1], x.device)
        return crop_patches(x, starts, self.patch_size), labels

    def decolor(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (..., C, p, p) with chromatic aberration removed as ``color_mode`` says."""
        if self.color_mode == "project":
            if patches.shape[-3] != 3:
                raise ValueError(f"color_mode 'project' needs RGB patches, got {patches.shape[-3]} channels")
            return project_colors(patches)
        if self.color_mode == "drop":
            keep = torch.randint(0, patches.shape[-3], patches.shape[:-3], device=patches.device)
            return drop_colors(patches, keep, torch.randn_like(patches), self.drop_noise)
        return patches

    def forward(self, batch: dict) -> dict:
        """batch["input"] = (B, C, H, W) images. Returns loss, acc (position accuracy) and std."""
        x = batch["input"]
        if x.dim() != 4:
            raise ValueError(f"relative position expects images (B, C, H, W), got {tuple(x.shape)}")
        patches, labels = self.cut(x)
        patches = standardize(self.decolor(patches))
        B, K = patches.shape[:2]
        h = self.encoder.pool(self.encoder.forward_features(rearrange(patches, "b k c h w -> (b k) c h w")))
        f = rearrange(self.fc6(h), "(b k) d -> b k d", b=B, k=K)
        z = torch.cat([f[:, :1].expand(-1, K - 1, -1), f[:, 1:]], -1)  # (B, P, 2 * patch_dim): [centre, neighbour]
        logits = self.head(z.flatten(0, 1)).float()  # late fusion, one row per pair
        labels = labels.flatten()
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "acc": acc, "std": embedding_std(h)}
