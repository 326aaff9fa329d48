"""CPC on images (CPC v2, Henaff et al., arXiv:1905.09272): the columns of a grid of image patches are
sequences read top to bottom, a masked convolution over the rows is the context, and ``CPC.score`` of
``mmssl.objectives.cpc`` scores them as it scores audio frames."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl.objectives.cpc import CPC, CPCSettings
from mmssl.objectives.heads import embedding_std
from mmssl.objectives.relative_position import drop_colors
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class CPCImageSettings(CPCSettings):
    """CPC on images (arXiv:1807.03748 Sec. 3.2; CPC v2, arXiv:1905.09272): a 7x7 grid of 64 px patches
    32 px apart on a 256 px crop, each patch encoded alone; a context over the rows (masked, PixelCNN-style
    convolutions) predicts the patches up to 5 rows below. Negatives are other patches of the batch, at
    other locations and in other images ("batch"); the papers score against all of them, here against
    ``num_negatives`` drawn from them. ``context_dim`` / ``context_layers``: the width and number of the
    context's residual blocks.

    Most negatives then come from other images, which a patch's colours alone tell apart; CPC v2 augments
    every patch on its own, colour dropping among others (``color_drop``: one random channel kept, the
    others replaced by faint noise, as arXiv:1505.05192). ``patch_norm`` (not the papers'): the encoder
    centres each patch's channels and scales it to unit RMS, in training and evaluation alike."""

    steps: int = 5
    patch_size: int = 64
    patch_stride: int = 32
    context_dim: int = 256
    context_layers: int = 3
    color_drop: bool = True
    patch_norm: bool = False


class RowCausalConv(nn.Conv2d):
    """A k x k convolution that reads the current row and the k - 1 rows above it, never one below:
    padding only above (and on both sides), so output row i sees input rows i - k + 1 .. i."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', H, W)
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, (kw // 2, kw // 2, kh - 1, 0)))


class RowContext(nn.Module):
    """Latents on a grid z (B, D, H, W) -> contexts c (B, D, H, W), c[..., i, :] reading rows <= i of z:
    residual blocks (1x1 down, a row-causal 3x3, 1x1 up), the shape of CPC v2's PixelCNN context."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(dim, hidden, 1), nn.ReLU(), RowCausalConv(hidden, hidden, 3),
                          nn.ReLU(), nn.Conv2d(hidden, dim, 1))
            for _ in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = z
        for block in self.blocks:
            c = c + block(c)
        return c


@OBJECTIVES.register("cpc_image")
class CPCImage(CPC):
    """CPC's objective over the columns of a patch grid: each column, read top to bottom, is a sequence
    whose latents are the patches' features and whose contexts come from ``RowContext``; ``score``, the
    InfoNCE CPC uses on audio frames, does the rest. The encoder is a ``patch_grid`` (each patch read
    alone), the module exported and probed: its pooled embedding is the mean patch feature."""

    Settings: ClassVar[type] = CPCImageSettings
    single_view = True
    every_context = True  # every row above a target row predicts it, as the papers' image CPC

    def __init__(self, encoder: nn.Module, *, steps: int = CPCImageSettings.steps,
                 num_negatives: int = CPCImageSettings.num_negatives,
                 negatives_from: str = CPCImageSettings.negatives_from,
                 temperature: float | None = CPCImageSettings.temperature,
                 patch_size: int = CPCImageSettings.patch_size, patch_stride: int = CPCImageSettings.patch_stride,
                 context_dim: int = CPCImageSettings.context_dim, context_layers: int = CPCImageSettings.context_layers,
                 color_drop: bool = CPCImageSettings.color_drop, patch_norm: bool = CPCImageSettings.patch_norm):
        grid = tuple(getattr(encoder, key, None) for key in ("patch", "stride", "standardize"))
        if grid != (patch_size, patch_stride, patch_norm):
            raise ValueError(f"cpc_image needs a patch_grid encoder of {patch_size} px patches {patch_stride} px apart "
                             f"with standardize={patch_norm}, got {type(encoder).__name__} with patch, stride, "
                             f"standardize = {grid}")
        if context_dim < 1 or context_layers < 0:
            raise ValueError(f"context_dim must be positive and context_layers >= 0, not {context_dim}, {context_layers}")
        super().__init__(encoder, steps=steps, num_negatives=num_negatives, negatives_from=negatives_from,
                         temperature=temperature)
        self.context = RowContext(encoder.embed_dim, context_dim, context_layers)
        self.color_drop = color_drop

    def latent_dims(self) -> tuple[int, int]:
        return self.encoder.embed_dim, self.encoder.embed_dim  # the context keeps z's width

    def forward(self, batch: dict) -> dict:
        """batch["input"] = (B, C, H, W) images. Returns the InfoNCE loss, acc, acc_stepK and std."""
        x = batch["input"]
        if x.dim() != 4:
            raise ValueError(f"cpc_image expects images (B, C, H, W), got {tuple(x.shape)}")
        rows, cols = self.encoder.grid(x.shape[-2], x.shape[-1])
        patches = self.encoder.patches(x)  # (B, rows * cols, C, p, p)
        if self.color_drop and self.training:  # one random channel kept per patch, the others noise
            keep = torch.randint(0, patches.shape[-3], patches.shape[:-3], device=patches.device)
            patches = drop_colors(patches, keep, torch.randn_like(patches), 0.01)
        tokens = self.encoder.encode(patches)  # (B, rows * cols, D)
        z = rearrange(tokens, "b (h w) d -> b d h w", h=rows, w=cols)
        c = self.context(z)
        columns = "b d h w -> (b w) h d"  # one sequence per column, read top to bottom
        out = self.score(rearrange(z, columns), rearrange(c, columns))
        return {**out, "std": embedding_std(self.encoder.pool(tokens))}

