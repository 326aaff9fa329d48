"""Jigsaw puzzles (Noroozi & Favaro, arXiv:1603.09246).

An image is cut into a 3x3 grid of cells; from each cell a smaller tile is cut at a random offset
(the gap and jitter keep edges and lines from running across neighbouring tiles, a shortcut), each
tile is standardised on its own (against shortcuts in low-level statistics) and its colour channels
are shifted by up to a few pixels each (against chromatic aberration, which tells a tile's place in
the lens). The tiles are shuffled by one of a fixed set of permutations; one shared encoder reads
every tile, a per-tile linear layer maps its pooled feature, and the concatenation in shuffled
order goes through a two-layer head that names the permutation.

The permutation set is chosen greedily for maximal average Hamming distance (the paper's
Algorithm 1), deterministically from ``perm_seed``; it is a buffer of the objective, so it is saved
in every checkpoint, and the task saves it beside the encoder.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.objectives.tiles import crop_patches, grid_corners
from mmssl.registry import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class JigsawSettings:
    """The paper's settings: 3x3 tiles of 64 px in 75 px cells, 1024 features per tile, a 4096-wide
    head. The paper's ablation shows larger sets of more distant permutations giving better features;
    100 is a common default. ``channel_shift``: each colour channel of a tile moves independently by
    up to this many pixels, so that colour fringes cannot tell a tile's place in the frame."""

    num_permutations: int = 100
    grid: int = 3
    tile_ratio: float = 64 / 75  # tile side over cell side
    channel_shift: int = 2  # pixels each colour channel of a tile may move, independently
    tile_dim: int = 1024
    hidden: int = 4096
    perm_seed: int = 0


def hamming_permutations(count: int, n: int = 9, seed: int = 0) -> torch.Tensor:
    """(count, n) permutations of range(n) chosen greedily for maximal average Hamming distance:
    start from a random one, then add the permutation whose summed distance to those chosen is
    largest (the first on ties). Deterministic given ``seed``."""
    if n > 10:
        raise ValueError(f"the permutation search enumerates all n! orders; n = {n} is too many")
    every = np.array(list(itertools.permutations(range(n))), dtype=np.int8)  # (n!, n)
    if not 1 <= count <= len(every):
        raise ValueError(f"num_permutations must be between 1 and {len(every)} ({n}!), not {count}")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(every)))]
    total = np.zeros(len(every), dtype=np.int64)
    taken = np.zeros(len(every), dtype=bool)
    for _ in range(count - 1):
        taken[chosen[-1]] = True
        total += (every != every[chosen[-1]]).sum(1)
        chosen.append(int(np.argmax(np.where(taken, -1, total))))
    return torch.from_numpy(every[chosen].astype(np.int64))


def cut_tiles(x: torch.Tensor, grid: int, tile: int, offsets: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Tiles of images x (B, C, H, W): cell k (row-major) of side H // grid gives a (tile x tile) tile
    at ``offsets`` (B, grid*grid, 2) pixels inside the cell, each channel c moved by ``shifts``
    (B, grid*grid, C, 2) pixels (clamped to the image) -> (B, grid*grid, C, tile, tile)."""
    corners = grid_corners(grid, min(x.shape[-2:]) // grid, x.device)  # (K, 2)
    return crop_patches(x, corners[None, :, None, :] + offsets[:, :, None, :] + shifts, tile)


@OBJECTIVES.register("jigsaw")
class Jigsaw(Objective):
    Settings: ClassVar[type] = JigsawSettings
    single_view = True

    def __init__(self, encoder: nn.Module, *, num_permutations: int = 100, grid: int = 3,
                 tile_ratio: float = 64 / 75, channel_shift: int = 2, tile_dim: int = 1024, hidden: int = 4096,
                 perm_seed: int = 0):
        super().__init__()
        if grid < 2 or not 0 < tile_ratio <= 1 or channel_shift < 0:
            raise ValueError(f"jigsaw needs grid >= 2, 0 < tile_ratio <= 1 and channel_shift >= 0, not {grid}, "
                             f"{tile_ratio}, {channel_shift}")
        self.encoder, self.grid, self.tile_ratio, self.channel_shift = encoder, grid, tile_ratio, channel_shift
        self.register_buffer("permutations", hamming_permutations(num_permutations, grid * grid, perm_seed))
        self.tile_proj = nn.Linear(encoder.embed_dim, tile_dim)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(grid * grid * tile_dim, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, num_permutations))

    def puzzle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) -> shuffled, standardised tiles (B, K, C, t, t) and labels (B,): tile
        position j holds cell ``permutations[label, j]``. Offsets, shifts and labels are drawn from
        torch's generator (seeded by the trainer, restored on resume)."""
        B, C, H, W = x.shape
        cell = min(H, W) // self.grid
        tile = max(1, round(cell * self.tile_ratio))
        K = self.grid * self.grid
        offsets = torch.randint(0, cell - tile + 1, (B, K, 2), device=x.device)
        s = self.channel_shift
        shifts = torch.randint(-s, s + 1, (B, K, C, 2), device=x.device)
        tiles = cut_tiles(x, self.grid, tile, offsets, shifts)
        labels = torch.randint(0, len(self.permutations), (B,), device=x.device)
        order = self.permutations[labels]  # (B, K)
        tiles = tiles[torch.arange(B, device=x.device)[:, None], order]
        mean = tiles.mean(dim=(2, 3, 4), keepdim=True)
        std = tiles.std(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
        return (tiles - mean) / std, labels

    def forward(self, batch: dict) -> dict:
        """batch["input"] = (B, C, H, W) images. Returns loss, acc (permutation accuracy) and std."""
        x = batch["input"]
        if x.dim() != 4 or min(x.shape[-2:]) < self.grid:
            raise ValueError(f"jigsaw expects images (B, C, H, W) of at least {self.grid} px, got {tuple(x.shape)}")
        tiles, labels = self.puzzle(x)
        B, K = tiles.shape[:2]
        h = self.encoder.pool(self.encoder.forward_features(rearrange(tiles, "b k c h w -> (b k) c h w")))
        z = rearrange(self.tile_proj(h), "(b k) d -> b (k d)", b=B, k=K)
        logits = self.head(z).float()
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "acc": acc, "std": embedding_std(h)}
