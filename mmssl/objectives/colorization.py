"""Tracking by colorization (Vondrick et al., arXiv:1806.09594).

The encoder sees only the lightness L of R reference frames and a target frame. Each
target position points into every reference position with a softmax over dot products
of their features, and the pointer copies the references' quantised colours; the loss is
the cross-entropy of the copied distribution against the target's own colour cluster.
Colour is mostly constant along an object's track, so the cheapest way to copy it right is
to point at the same physical point: at test time the same pointer copies segmentation
masks instead of colours, a tracker learned without labels.

Colours live in CIE Lab: L is the input and k-means clusters of (a, b) are the classes
(``ColorQuantizer``), 16 of them as in the paper.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl.objectives.base import Objective
from mmssl.objectives.kmeans import kmeans
from mmssl.registry import OBJECTIVES

# Linear sRGB -> XYZ under the D65 white point (IEC 61966-2-1). The white is the matrix's row
# sums, so RGB (1, 1, 1) is exactly L = 100, a = b = 0.
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_XYZ_TO_RGB = tuple(map(tuple, torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).tolist()))
_WHITE = tuple(sum(row) for row in _RGB_TO_XYZ)
_DELTA = 6 / 29  # CIE Lab's switch between the cube root and its linear toe


def _mix(m: tuple, x: torch.Tensor) -> torch.Tensor:
    """3x3 matrix ``m`` applied on dim -3 of x (..., 3, H, W), by elementwise ops (exact under autocast)."""
    c = x.unbind(-3)
    return torch.stack([m[i][0] * c[0] + m[i][1] * c[1] + m[i][2] * c[2] for i in range(3)], dim=-3)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE Lab (D65): float (..., 3, H, W) -> (..., 3, H, W).

    L is in [0, 100]; a and b lie within about [-87, 99] and [-108, 95] for sRGB colours.
    """
    rgb = rgb.to(torch.promote_types(rgb.dtype, torch.float32)).clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _mix(_RGB_TO_XYZ, linear) / torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device)[:, None, None]
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) -> sRGB clipped to [0, 1]: float (..., 3, H, W) -> (..., 3, H, W)."""
    lab = lab.to(torch.promote_types(lab.dtype, torch.float32))
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    linear = _mix(_XYZ_TO_RGB, xyz * torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device)[:, None, None])
    linear = linear.clamp(0, 1)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055).clamp(0, 1)


class ColorQuantizer(nn.Module):
    """k colour classes: k-means centres in the (a, b) plane of Lab, kept as the buffer ``centers`` (k, 2).

    The centres start at zero: ``fit`` them (or load a state dict) before use.
    """

    def __init__(self, k: int = 16):
        super().__init__()
        if k < 2:
            raise ValueError(f"a colour quantizer needs k >= 2 clusters, not {k}")
        self.k = k
        self.register_buffer("centers", torch.zeros(k, 2))
        self._seen_fitted = False

    @torch.no_grad()
    def fit(self, ab: torch.Tensor, iters: int = 20, generator: torch.Generator | None = None) -> ColorQuantizer:
        """k-means++ seeding then ``iters`` Lloyd steps (``mmssl.objectives.kmeans``), on the CPU;
        deterministic for a given CPU generator; an empty cluster keeps its centre.

        Args:
            ab: (M, 2) (a, b) samples, M >= k (subsample pixels first: every step is O(M k)).
        Returns: self, with ``centers`` set.
        """
        if ab.dim() != 2 or ab.shape[1] != 2 or ab.shape[0] < self.k:
            raise ValueError(f"fit expects at least k={self.k} (a, b) samples as (M, 2), got {tuple(ab.shape)}")
        centers, _ = kmeans(ab.detach().float().cpu(), self.k, iters, generator)
        self.centers.copy_(centers)
        return self

    def check_fitted(self) -> None:
        """Raise if the centres are still the unfitted zeros. Reads the centres on the host until it
        has seen them fitted once, not on every step."""
        if not self._seen_fitted:
            if (self.centers == self.centers[:1]).all():
                # Unfitted centres put every colour in one class: a loss of 0 that teaches nothing.
                raise ValueError("the colour quantizer is not fitted: call quantizer.fit(ab) or load its centers first")
            self._seen_fitted = True

    def assign(self, ab: torch.Tensor) -> torch.Tensor:
        """Nearest centre: float (..., 2, H, W) -> long (..., H, W)."""
        x = ab.movedim(-3, -1).to(self.centers.dtype)  # (..., H, W, 2)
        return (x[..., None, :] - self.centers).pow(2).sum(-1).argmin(dim=-1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Centres of the classes: long (..., H, W) -> float (..., 2, H, W)."""
        return self.centers[ids].movedim(-1, -3)


@dataclasses.dataclass(frozen=True)
class ColorizationSettings:
    """The colorization objective's settings, defaults from the paper (arXiv:1806.09594): 3 reference
    frames per target and a plain softmax over the affinities (temperature 1). The number of colour
    classes (the paper's 16) belongs to the fitted ``ColorQuantizer`` the task passes in."""

    num_refs: int = 3
    temperature: float = 1.0
    eps: float = 1e-8


@OBJECTIVES.register("colorization")
class Colorization(Objective):
    Settings: ClassVar[type] = ColorizationSettings

    def __init__(self, encoder: nn.Module, quantizer: ColorQuantizer, *, num_refs: int = ColorizationSettings.num_refs,
                 temperature: float = ColorizationSettings.temperature, eps: float = ColorizationSettings.eps):
        """
        Args:
            encoder: exposes ``feature_map`` (B, 1, H, W) -> (B, D, h, w): it reads the L channel
                of Lab scaled to [-1, 1].
            quantizer: fitted colour classes; its centres are a buffer of this module, so they
                travel in checkpoints. Not a setting: the task fits it on its training frames.
            num_refs: reference frames R per target (the paper's 3).
            temperature: affinities are dot products divided by it; the paper's softmax has none (1).
            eps: added to the copied probabilities before the log, so a colour absent from every
                reference costs -log(eps) rather than infinity.
        """
        super().__init__()
        if num_refs < 1 or temperature <= 0 or eps <= 0:
            raise ValueError(f"need num_refs >= 1, temperature > 0 and eps > 0, got {num_refs}, {temperature}, {eps}")
        self.encoder, self.quantizer = encoder, quantizer
        self.num_refs, self.temperature, self.eps = num_refs, temperature, eps

    def copy_colors(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pointer's copied colour distribution and the target's true colour classes.

        Args:
            frames: float (B, R + 1, 3, H, W) RGB in [0, 1]; the first R are references, the last the target.
        Returns:
            pred (B, h * w, k): for each target position, the probability of each colour class;
            target long (B, h * w): the class of the target's (a, b) averaged over each feature
            cell (adaptive average pooling to the map's (h, w): the stride x stride block mean
            when H and W are multiples of the stride), row-major.
        """
        if frames.dim() != 5 or frames.shape[1] != self.num_refs + 1 or frames.shape[2] != 3:
            raise ValueError(f"colorization expects frames (B, {self.num_refs + 1}, 3, H, W) RGB, "
                             f"got {tuple(frames.shape)}")
        self.quantizer.check_fitted()
        B, R = frames.shape[0], self.num_refs
        with torch.no_grad():
            lab = rgb_to_lab(rearrange(frames, "b t c h w -> (b t) c h w"))  # (B * (R + 1), 3, H, W)
        f = self.encoder.feature_map(lab[:, :1] / 50 - 1)  # L in [-1, 1] -> (B * (R + 1), D, h, w)
        with torch.no_grad():
            ab = F.adaptive_avg_pool2d(lab[:, 1:], f.shape[-2:])  # (B * (R + 1), 2, h, w)
            ids = rearrange(self.quantizer.assign(ab), "(b t) h w -> b t (h w)", b=B)
        f = rearrange(f, "(b t) d h w -> b t (h w) d", b=B)
        f_ref = rearrange(f[:, :R], "b r n d -> b (r n) d")  # (B, R * h * w, D)
        onehot = F.one_hot(rearrange(ids[:, :R], "b r n -> b (r n)"), self.quantizer.k)  # (B, R * h * w, k)
        # The affinity softmax in fp32 even under autocast: it compares logits of many positions.
        with torch.autocast(f.device.type, enabled=False):
            logits = f[:, R].float() @ f_ref.float().transpose(1, 2) / self.temperature  # (B, h * w, R * h * w)
            pred = logits.softmax(dim=-1) @ onehot.float()  # (B, h * w, k)
        return pred, ids[:, R]

    def forward(self, batch: dict) -> dict:
        """batch["frames"] float (B, R + 1, 3, H, W). Returns loss (mean NLL of the target classes) and acc (of the argmax cluster)."""
        pred, target = self.copy_colors(batch["frames"])
        loss = -(pred.gather(-1, target[..., None]) + self.eps).log().mean()
        accuracy = (pred.detach().argmax(dim=-1) == target).float().mean()
        return {"loss": loss, "acc": accuracy}

