"""One tokeniser for every grid-shaped signal: non-overlapping patches, flattened.

The same module cuts images (B, C, H, W) and spectrograms (B, 1, F, T) into
(ph, pw) patches (ViT, arXiv:2010.11929; AST, arXiv:2104.01778), videos
(B, C, T, H, W) into (pt, ph, pw) tubelets (ViViT, arXiv:2103.15691) and
waveforms (B, C, L) or (B, L) into frames of p samples. Tokens are ordered
row-major over the patch grid and each token's values are laid out as
(p_0 .. p_{n-1}, c), channels last, the layout of MAE's ``patchify``
(arXiv:2111.06377), so per-patch statistics and positions agree everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn


class Patchify(nn.Module):
    """Signal (B, C, *sizes) <-> tokens (B, N, C * prod(patch)); no parameters.

    Args:
        patch: patch size per patched axis, e.g. (16, 16), (2, 16, 16) or (400,).
        channels: C, the number of input channels.
    """

    def __init__(self, patch: Sequence[int], channels: int):
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        if not self.patch or min(self.patch) < 1:
            raise ValueError(f"patch must be a non-empty list of positive sizes, not {list(patch)}")
        if channels < 1:
            raise ValueError(f"channels must be positive, not {channels}")
        self.channels = int(channels)
        self.patch_dim = self.channels * math.prod(self.patch)
        n = len(self.patch)
        self._p = {f"p{i}": p for i, p in enumerate(self.patch)}
        grid, within = " ".join(f"g{i}" for i in range(n)), " ".join(self._p)
        # e.g. "b c (g0 p0) (g1 p1)" <-> "b (g0 g1) (p0 p1 c)"
        self._signal = "b c " + " ".join(f"(g{i} p{i})" for i in range(n))
        self._tokens = f"b ({grid}) ({within} c)"

    def grid(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Patches per axis.

        Args:
            shape: the sizes of the patched axes, or a whole input shape whose last
                ``len(patch)`` entries are those sizes.
        Returns:
            (g_0, ..., g_{n-1}) with g_i = shape_i / patch_i.
        """
        n = len(self.patch)
        if len(shape) < n:
            raise ValueError(f"a {n}-axis patch {list(self.patch)} needs {n} sizes, got {list(shape)}")
        sizes = [int(s) for s in shape[len(shape) - n:]]
        for axis, (size, p) in enumerate(zip(sizes, self.patch)):
            if size % p:
                raise ValueError(f"input size {size} on patched axis {axis} is not divisible by the patch "
                                 f"size {p} (sizes {sizes}, patch {list(self.patch)})")
        return tuple(s // p for s, p in zip(sizes, self.patch))

    def to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *sizes), or (B, *sizes) when C = 1 -> tokens (B, N, C * prod(patch))."""
        n = len(self.patch)
        if x.dim() == n + 1 and self.channels == 1:
            x = x.unsqueeze(1)  # (B, 1, *sizes): a mono waveform or spectrogram without its channel axis
        if x.dim() != n + 2:
            raise ValueError(f"expected a (B, C, {n} patched axes) input for patch {list(self.patch)}, "
                             f"got shape {list(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]} (shape {list(x.shape)})")
        self.grid(x.shape)  # a clear message before einops' own
        return rearrange(x, f"{self._signal} -> {self._tokens}", **self._p)

    def from_patches(self, patches: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """Exact inverse of ``to_patches``: tokens (B, N, patch_dim) -> x (B, C, *sizes).

        A channel-less input (B, *sizes) comes back with its channel axis, (B, 1, *sizes).
        """
        if len(grid) != len(self.patch) or patches.shape[-1] != self.patch_dim:
            raise ValueError(f"tokens {list(patches.shape)} and grid {list(grid)} do not match patch "
                             f"{list(self.patch)} with {self.channels} channels")
        sizes = {f"g{i}": int(g) for i, g in enumerate(grid)}
        return rearrange(patches, f"{self._tokens} -> {self._signal}", c=self.channels, **sizes, **self._p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_patches(x)
