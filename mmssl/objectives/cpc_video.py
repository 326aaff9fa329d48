"""CPC on video (dense predictive coding, Han, Xie & Zisserman, arXiv:1909.04656): every cell of a
clip's frame feature maps over time, or its pooled frame features, is a sequence that ``CPC.score`` of
``mmssl.objectives.cpc`` scores as it scores audio frames."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl import dist
from mmssl.encoders.context import CONTEXTS
from mmssl.objectives.cpc import CPC, CPCSettings
from mmssl.objectives.heads import embedding_std
from mmssl.registry import ENCODERS, OBJECTIVES


@dataclasses.dataclass(frozen=True)
class CPCVideoSettings(CPCSettings):
    """Dense predictive coding (Han et al., arXiv:1909.04656): CPC over time on video, cell by cell.

    ``spatial="dense"`` (the paper's): the frame encoder's feature map, average-pooled to ``grid`` x
    ``grid`` cells (0: the map as it is; the paper's encoder gives 4 x 4 on 128 px frames), makes one
    sequence per cell over time; the context reads each cell's z_<=t and the next ``steps`` latents of every
    cell are predicted, 3 as the paper's. ``context``: gru (a GRU per cell; the paper's ConvGRU has 1 x 1
    kernels, the same network), causal_transformer (per cell), or conv_gru (3 x 3 gates, so a cell's context
    also reads its neighbours' past). Negatives: "batch" (the paper's), any cell of any frame of any clip:
    spatial, temporal and other-video negatives together; "cell", the position's own cell in any clip at any
    time (no spatial negatives); "clip", any cell of its own clip at any time (no other-video negatives).
    ``jitter`` (not the paper's; dense, grid 0, training only): each frame is encoded from its own window,
    ``jitter`` map cells smaller a side, at a random whole-cell offset, so a cell's place in the map, which
    zero padding lets a conv net read, tells neither the positive nor the negatives apart.

    ``spatial="pooled"``: one sequence per clip of the frames' pooled features (the map's mean), which
    predicts nothing about where things are in a frame."""

    steps: int = 3
    context: str = "gru"
    context_layers: int = 1
    spatial: str = "dense"
    grid: int = 0
    jitter: int = 0


class ConvGRU(nn.Module):
    """A GRU whose gates are k x k convolutions over a map of cells (Ballas et al., arXiv:1511.06432), so a
    cell's context reads its neighbours' past as well as its own: maps (B, T, D, h, w) -> contexts of the
    same shape, c_t reading z_<=t only."""

    def __init__(self, dim: int, kernel: int = 3, layers: int = 1):
        super().__init__()
        self.gates = nn.ModuleList(nn.Conv2d(2 * dim, 2 * dim, kernel, padding=kernel // 2) for _ in range(layers))
        self.candidates = nn.ModuleList(nn.Conv2d(2 * dim, dim, kernel, padding=kernel // 2) for _ in range(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for gates, candidate in zip(self.gates, self.candidates):
            h, out = torch.zeros_like(x[:, 0]), []
            for t in range(x.shape[1]):
                r, u = torch.sigmoid(gates(torch.cat([x[:, t], h], 1))).chunk(2, 1)
                h = (1 - u) * h + u * torch.tanh(candidate(torch.cat([x[:, t], r * h], 1)))
                out.append(h)
            x = torch.stack(out, 1)
        return x


@OBJECTIVES.register("cpc_video")
class CPCVideo(CPC):
    """CPC's objective over a clip's frames: z_t the encoder's map cells (dense) or pooled frame features,
    c_t from an autoregressive context as wide as z (``mmssl.encoders.context`` per sequence, or
    ``ConvGRU`` over the map), ``score`` as on audio frames over one sequence per clip (pooled) or per
    (clip, cell) (dense)."""

    Settings: ClassVar[type] = CPCVideoSettings

    def __init__(self, encoder: nn.Module, *, steps: int = CPCVideoSettings.steps,
                 num_negatives: int = CPCVideoSettings.num_negatives,
                 negatives_from: str = CPCVideoSettings.negatives_from,
                 temperature: float | None = CPCVideoSettings.temperature,
                 context: str = CPCVideoSettings.context, context_layers: int = CPCVideoSettings.context_layers,
                 spatial: str = CPCVideoSettings.spatial, grid: int = CPCVideoSettings.grid,
                 jitter: int = CPCVideoSettings.jitter):
        if context not in (*CONTEXTS, "conv_gru"):
            raise ValueError(f"context must be {', '.join(CONTEXTS)} or conv_gru, not '{context}'")
        if context == "conv_gru" and spatial != "dense":
            raise ValueError("context='conv_gru' reads maps of cells: it needs spatial='dense'")
        if context_layers < 1:
            raise ValueError(f"context_layers must be positive, not {context_layers}")
        if spatial not in ("dense", "pooled"):
            raise ValueError(f"spatial must be 'dense' or 'pooled', not {spatial!r}")
        if grid < 0:
            raise ValueError(f"grid must be 0 (the encoder's map) or a positive number of cells a side, not {grid}")
        if jitter < 0 or (jitter and (spatial != "dense" or grid)):
            raise ValueError(f"jitter must be >= 0 cells and needs spatial='dense' with grid=0, not jitter={jitter}")
        if spatial == "dense" and not hasattr(encoder, "feature_map"):
            raise ValueError(f"spatial='dense' reads the encoder's feature map: {type(encoder).__name__} has no feature_map")
        if negatives_from in ("cell", "clip") and spatial != "dense":
            raise ValueError(f"negatives_from={negatives_from!r} (negatives by cell and clip) needs spatial='dense'")
        super().__init__(encoder, steps=steps, num_negatives=num_negatives,
                         negatives_from="batch" if negatives_from in ("cell", "clip") else negatives_from,
                         temperature=temperature)
        self.negatives_from = negatives_from
        dim = encoder.embed_dim
        if context == "conv_gru":
            self.context = ConvGRU(dim, layers=context_layers)
        else:
            self.context = ENCODERS.build(context, in_dim=dim, dim=dim, layers=context_layers)
        self.spatial, self.grid, self.jitter = spatial, grid, jitter
        self._stride: dict[tuple[int, int], int] = {}  # frame (H, W) -> the encoder map's stride

    def latent_dims(self) -> tuple[int, int]:
        return self.encoder.embed_dim, self.encoder.embed_dim  # the context keeps z's width

    def stride(self, x: torch.Tensor) -> int:
        """Pixels per cell of the encoder's map on frames of x's size (one probe per size)."""
        H, W = x.shape[-2:]
        if (H, W) not in self._stride:
            with torch.no_grad():
                h, w = self.encoder.feature_map(x.reshape(-1, *x.shape[-3:])[:1]).shape[-2:]
            if H % h or W % w or H // h != W // w:
                raise ValueError(f"jitter needs frames a whole number of map cells across, not {H} x {W} for {h} x {w}")
            self._stride[H, W] = H // h
        return self._stride[H, W]

    def jittered_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, C, H, W) -> maps (B, T, D, n, m) of the scene cells every frame sees, each frame
        encoded from its own window of the frame, ``jitter`` cells smaller a side, at a random offset of whole
        cells: a scene cell sits at a different place of each frame's map, so where a cell is in the map
        (which zero padding lets a conv net read) tells neither the positive nor the negatives apart."""
        B, T, _, H, W = x.shape
        s, j = self.stride(x), self.jitter
        n, m = H // s - 2 * j, W // s - 2 * j  # scene cells inside every window
        if n < 1 or m < 1:
            raise ValueError(f"jitter={j} leaves no cell of a {H} x {W} frame in every window")
        # (dy, dx) in cells per frame, drawn for the global batch (as the negatives) and cut to this process's frames
        world, rank = dist.world_size(), dist.rank()
        off = torch.randint(j + 1, (world * B * T, 2), device=x.device)[rank * B * T : (rank + 1) * B * T]
        frame = torch.arange(B * T, device=x.device)[:, None, None]

        def window(maps: torch.Tensor, start: torch.Tensor, h: int, w: int) -> torch.Tensor:
            """(B * T, C, ., .) -> (B * T, C, h, w) from row start[:, 0], column start[:, 1], per frame."""
            rows = start[:, :1] + torch.arange(h, device=x.device)  # (B * T, h)
            cols = start[:, 1:] + torch.arange(w, device=x.device)  # (B * T, w)
            return maps.permute(0, 2, 3, 1)[frame, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

        windows = window(x.flatten(0, 1), off * s, H - j * s, W - j * s)  # (B * T, C, H - j * s, W - j * s)
        z = self.encoder.feature_map(windows)  # (B * T, D, H / s - j, W / s - j)
        # scene cell (u, v), u in [j, H / s - j), lies at map (u - dy, v - dx) of a frame offset by (dy, dx)
        z = window(z, j - off, n, m)
        return rearrange(z, "(b t) d h w -> b t d h w", b=B, t=T)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, C, H, W) -> the latents' maps (B, T, D, h, w): every cell of the encoder's map (or of
        its ``grid`` pooling), or with ``jitter`` in training the cells every jittered window sees."""
        B, T = x.shape[:2]
        if self.jitter and self.training:
            return self.jittered_maps(x)
        z = self.encoder.feature_map(x.flatten(0, 1))  # (B * T, D, h, w)
        if self.grid:
            z = F.adaptive_avg_pool2d(z, self.grid)  # (B * T, D, grid, grid)
        return rearrange(z, "(b t) d h w -> b t d h w", b=B, t=T)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, C, H, W) -> latents (S, T, D), one sequence per clip (pooled) or per (clip, cell)
        (dense: S = B * cells, clip-major, cells row-major)."""
        if self.spatial == "pooled":
            B, T = x.shape[:2]
            tokens = self.encoder.forward_features(x.flatten(0, 1))  # (B * T, N, D)
            return rearrange(self.encoder.pool(tokens), "(b t) d -> b t d", b=B, t=T)
        return rearrange(self.maps(x), "b t d h w -> (b h w) t d")

    def contexts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips (B, T, C, H, W) -> latents z and contexts c, both (S, T, D) as ``latents``."""
        if self.spatial == "pooled" or not isinstance(self.context, ConvGRU):
            z = self.latents(x)
            return z, self.context(z)
        maps = self.maps(x)  # (B, T, D, h, w)
        cells = "b t d h w -> (b h w) t d"
        return rearrange(maps, cells), rearrange(self.context(maps), cells)

    def sample_dense_negatives(self, clips: int, cells: int, length: int, usable: int,
                               device: torch.device) -> torch.Tensor:
        """Negatives of ``negatives_from`` "cell" (the position's own cell in any clip of the global batch, at
        any time) or "clip" (any cell of the position's own clip, at any time): indices (clips * cells *
        usable, M) into the pool of (clip, cell, time) latents. Drawn for the global batch and cut to this
        process's rows, as ``sample_negatives``."""
        world, rank = dist.world_size(), dist.rank()
        rows, shape = clips * cells * usable, (world * clips * cells * usable, self.num_negatives)
        if self.negatives_from == "cell":
            cell = torch.arange(cells, device=device).repeat_interleave(usable).repeat(world * clips)[:, None]
            clip = torch.randint(world * clips, shape, device=device)
        else:
            clip = torch.arange(world * clips, device=device).repeat_interleave(cells * usable)[:, None]
            cell = torch.randint(cells, shape, device=device)
        idx = (clip * cells + cell) * length + torch.randint(length, shape, device=device)
        return idx[rank * rows : (rank + 1) * rows]

    def forward(self, batch: dict) -> dict:
        """batch["frames"] = (B, T, C, H, W) clips. Returns the InfoNCE loss, acc, acc_stepK and std."""
        x = batch["frames"]
        if x.dim() != 5:
            raise ValueError(f"cpc_video expects clips (B, T, C, H, W), got {tuple(x.shape)}")
        z, c = self.contexts(x)  # (S, T, D) each
        neg_index = None
        if self.negatives_from in ("cell", "clip"):
            B, T = x.shape[:2]
            neg_index = self.sample_dense_negatives(B, z.shape[0] // B, T, T - self.steps, z.device)
        out = self.score(z, c, neg_index)
        return {**out, "std": embedding_std(z.flatten(0, 1))}
