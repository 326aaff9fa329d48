"""An image read as a grid of overlapping square patches, each encoded on its own (CPC on images,
arXiv:1807.03748 Sec. 3.2; CPC v2, arXiv:1905.09272): the tokens are the patches' pooled features,
row-major over the grid, and the pooled embedding is their mean, what CPC v2's linear probes read.

No patch sees a pixel outside itself, so a context over the grid's rows (``mmssl.objectives.cpc_image``)
can predict a lower row's patches from the rows above without the encoder having read them.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from mmssl.objectives.tiles import crop_patches, standardize
from mmssl.registry import ENCODERS


@ENCODERS.register("patch_grid")
class PatchGrid(nn.Module):
    """Images (B, C, H, W) -> tokens (B, rows * cols, D), one per ``patch`` px patch, ``stride`` px apart.

    Args:
        encoder: the registry spec of the image encoder that reads each patch (``forward_features``
            then its own ``pool``), e.g. ``{"name": "convnet", "kwargs": {...}}``.
        patch: side of a patch in pixels.
        stride: pixels between neighbouring patches (less than ``patch``: they overlap).
        standardize: centre each channel of a patch and scale the patch to unit RMS before reading it, so
            that its brightness and colour balance are no cue (as Doersch et al. do, arXiv:1505.05192).
    """

    def __init__(self, encoder: dict, patch: int = 8, stride: int = 4, standardize: bool = False):
        super().__init__()
        if patch < 1 or stride < 1:
            raise ValueError(f"patch and stride must be positive, not {patch} and {stride}")
        self.encoder = ENCODERS.build(encoder["name"], **encoder.get("kwargs", {}))
        self.patch, self.stride, self.standardize = patch, stride, standardize
        self.embed_dim = self.encoder.embed_dim

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the grid on an image of ``height`` x ``width`` px; pixels past the last
        whole patch are not read."""
        if min(height, width) < self.patch:
            raise ValueError(f"a {height}x{width} image is smaller than one {self.patch} px patch")
        return (height - self.patch) // self.stride + 1, (width - self.patch) // self.stride + 1

    def corners(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """(rows * cols, 2) (row, col) top-left pixels of the patches, row-major."""
        rows, cols = self.grid(height, width)
        r = torch.arange(rows, device=device) * self.stride
        c = torch.arange(cols, device=device) * self.stride
        return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, rows * cols, C, patch, patch)."""
        starts = self.corners(x.shape[-2], x.shape[-1], x.device)
        return crop_patches(x, starts.expand(x.shape[0], -1, -1), self.patch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, rows * cols, D)."""
        return self.encode(self.patches(x))

    def encode(self, p: torch.Tensor) -> torch.Tensor:
        """Patches (B, N, C, patch, patch) -> their features (B, N, D), each patch read alone."""
        B, N = p.shape[:2]
        if self.standardize:
            p = standardize(p)
        flat = rearrange(p, "b n c h w -> (b n) c h w")
        z = self.encoder.pool(self.encoder.forward_features(flat))  # (B * N, D)
        return rearrange(z, "(b n) d -> b n d", b=B, n=N)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the mean patch."""
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
