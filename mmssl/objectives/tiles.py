"""Square patches cut out of images at given places, the piece the patch-based pretext tasks share:
jigsaw puzzles (arXiv:1603.09246) cut a grid of tiles, relative position (arXiv:1505.05192) a pair
from a grid with gaps. Each says where its patches start; this module only lays out the grid and
gathers the pixels, in one indexing op for the whole batch."""
from __future__ import annotations

import torch


def grid_corners(grid: int, step: int, device: torch.device | None = None) -> torch.Tensor:
    """(grid * grid, 2) (row, col) top-left corners of a grid's cells, row-major, ``step`` px apart."""
    k = torch.arange(grid * grid, device=device)
    return torch.stack([k // grid, k % grid], -1) * step


def crop_patches(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Patches of images x (B, C, H, W) whose top-left pixels are ``starts``: (B, K, 2) (row, col),
    one place per patch, or (B, K, C, 2), one per channel of each patch (jigsaw's channel shifts).
    Rows and columns past the border repeat the edge pixel. Returns (B, K, C, size, size)."""
    B, C, H, W = x.shape
    if starts.dim() == 3:
        starts = starts[:, :, None, :].expand(-1, -1, C, -1)  # (B, K, C, 2)
    t = torch.arange(size, device=x.device)
    rows = (starts[..., 0, None] + t).clamp(0, H - 1)  # (B, K, C, size)
    cols = (starts[..., 1, None] + t).clamp(0, W - 1)
    b = torch.arange(B, device=x.device)[:, None, None, None, None]
    c = torch.arange(C, device=x.device)[None, None, :, None, None]
    return x[b, c, rows[..., :, None], cols[..., None, :]]  # (B, K, C, size, size)


def standardize(patches: torch.Tensor) -> torch.Tensor:
    """(..., C, h, w): each channel of a patch centred, then the patch divided by its RMS."""
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    return centred / centred.square().mean(dim=(-3, -2, -1), keepdim=True).sqrt().clamp_min(1e-6)
