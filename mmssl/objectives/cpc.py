"""Contrastive Predictive Coding (van den Oord et al., arXiv:1807.03748).

An encoder maps the signal to frames z_t, an autoregressive context network
summarises z_<=t into c_t, and a separate linear predictor W_k per step
k = 1..K scores W_k c_t against z_{t+k} (the positive) and against negatives
drawn from all frames of all sequences on all processes (InfoNCE).

The objective is the same whatever the sequence: ``CPC.score`` takes latents z (B, T, D) and
contexts c (B, T, D'), and ``CPC`` reads them off an audio encoder's frames and autoregressive
context, ``CPCImage`` off the columns of a grid of image patches (CPC v2, arXiv:1905.09272) with a
masked convolutional context over the rows, ``CPCVideo`` off every cell of a clip's frame feature maps
over time (dense predictive coding, arXiv:1909.04656), or off its pooled frame features.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmssl import dist
from mmssl.encoders.context import CONTEXTS
from mmssl.losses import cpc_info_nce
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.objectives.relative_position import drop_colors
from mmssl.registry import ENCODERS, OBJECTIVES


@dataclasses.dataclass(frozen=True)
class CPCSettings:
    """CPC's settings, defaults from the paper (arXiv:1807.03748): K = 12 future steps predicted with one
    linear map each, scored against the positive and 128 negatives per position drawn from the frames
    of the whole batch, by the plain dot product (``temperature`` None)."""

    steps: int = 12
    num_negatives: int = 128
    negatives_from: str = "batch"
    temperature: float | None = None


@OBJECTIVES.register("cpc")
class CPC(Objective):
    Settings: ClassVar[type] = CPCSettings

    def __init__(self, encoder: nn.Module, *, steps: int = CPCSettings.steps,
                 num_negatives: int = CPCSettings.num_negatives, negatives_from: str = CPCSettings.negatives_from,
                 temperature: float | None = CPCSettings.temperature):
        """
        Args:
            encoder: a sequence encoder (``forward_frames`` -> z, ``forward_context`` -> c).
            steps: K, the number of future frames predicted.
            num_negatives: M negatives per position, shared by the K steps.
            negatives_from: "batch" (any frame of any sequence on any process),
                "sequence" (frames of the same sequence only) or "others" (frames of the
                other sequences only: the paper's "mixed speaker, excluding current sequence").
            temperature: None scores with the dot product, as the paper; a number scores
                with cosine similarity divided by it (as wav2vec 2.0), which escapes the
                initial plateau much sooner on short runs.
        """
        super().__init__()
        if negatives_from not in ("batch", "sequence", "others"):
            raise ValueError(f"negatives_from must be 'batch', 'sequence' or 'others', not {negatives_from!r}")
        if steps < 1 or num_negatives < 1:
            raise ValueError("steps and num_negatives must be positive")
        self.encoder = encoder
        self.steps, self.num_negatives, self.negatives_from = steps, num_negatives, negatives_from
        self.temperature = temperature
        z_dim, c_dim = self.latent_dims()
        # One (c_dim -> z_dim) map per step, held as a single tensor so all steps run in one einsum.
        self.predictors = nn.Parameter(torch.randn(steps, c_dim, z_dim) / c_dim**0.5)

    def latent_dims(self) -> tuple[int, int]:
        """(D of z, D of c): a sequence encoder's frames and context."""
        return self.encoder.frames.embed_dim, self.encoder.embed_dim

    def sample_negatives(self, batch: int, length: int, usable: int, device: torch.device) -> torch.Tensor:
        """Negative indices (batch * usable, M) into the pool of this process.

        They are drawn for the global batch from the (process-synchronised) RNG
        and this process keeps its rows, so any number of processes draws
        exactly what one process would draw for the same global batch.
        """
        world, rank = dist.world_size(), dist.rank()
        rows = world * batch * usable
        if self.negatives_from == "batch":
            idx = torch.randint(world * batch * length, (rows, self.num_negatives), device=device)
        else:
            start = torch.arange(world * batch, device=device).repeat_interleave(usable)[:, None] * length
            if self.negatives_from == "sequence":
                idx = start + torch.randint(length, (rows, self.num_negatives), device=device)
            else:  # others: draw from all but one sequence, then step over the row's own
                if world * batch < 2:
                    raise ValueError("negatives_from='others' needs at least two sequences in the global batch")
                idx = torch.randint((world * batch - 1) * length, (rows, self.num_negatives), device=device)
                idx = idx + (idx >= start) * length
        return idx[rank * batch * usable : (rank + 1) * batch * usable]

    def forward(self, batch: dict) -> dict:
        x = batch["input"]
        z = self.encoder.forward_frames(x)  # (B, T, Dz)
        c = self.encoder.forward_context(z)  # (B, T, Dc)
        return self.score(z, c)

    def score(self, z: torch.Tensor, c: torch.Tensor, neg_index: torch.Tensor | None = None) -> dict:
        """InfoNCE of W_k c_t against z_{t+k}, whatever the sequences are: audio frames, a column of
        image patches read top to bottom, video frames.

        Args:
            z: (B, T, Dz) latents, B sequences of T steps; every z of every process is a candidate negative.
            c: (B, T, Dc) contexts, c_t read z_<=t only.
            neg_index: (B * (T - K), M) indices of each position's negatives into the pool, the global
                batch's z (all processes' sequences in rank order, each T long); None draws them by
                ``negatives_from``.
        Returns: {"loss", "acc" (the positive ranked first, all steps), "acc_stepK" for three of the steps}.
        """
        B, T, Dz = z.shape
        usable = T - self.steps
        if usable < 1:
            raise ValueError(f"a crop of {T} frames is too short to predict {self.steps} steps ahead")
        pool = dist.all_gather(z.reshape(B * T, Dz))  # (world * B * T, Dz), gradients kept
        offset = dist.rank() * B * T
        pred = torch.einsum("btc,kcd->kbtd", c[:, :usable], self.predictors.to(c.dtype))  # (K, B, T-K, Dz)
        t = torch.arange(usable, device=z.device)
        k = torch.arange(1, self.steps + 1, device=z.device)
        b = torch.arange(B, device=z.device)
        pos_index = offset + b[None, :, None] * T + t[None, None, :] + k[:, None, None]  # (K, B, T-K)
        if neg_index is None:
            neg_index = self.sample_negatives(B, T, usable, z.device)
        pred = pred.flatten(1, 2)
        if self.temperature is not None:
            pred = F.normalize(pred, dim=-1) / self.temperature
            pool = F.normalize(pool, dim=-1)
        loss_k, acc_k = cpc_info_nce(pred, pool, pos_index.flatten(1), neg_index)
        out = {"loss": loss_k.mean(), "acc": acc_k.mean().detach()}
        for i in (0, self.steps // 2, self.steps - 1):
            out[f"acc_step{i + 1}"] = acc_k[i].detach()
        return out


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


def map_shape(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) of a row-major feature map of ``tokens`` cells read off a height x width frame."""
    h = max(1, round(math.sqrt(tokens * height / width)))
    if tokens % h:
        raise ValueError(f"{tokens} tokens do not make a map of a {height} x {width} frame's shape")
    return h, tokens // h


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
                h, w = map_shape(self.encoder.forward_features(x.reshape(-1, *x.shape[-3:])[:1]).shape[1], H, W)
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
        tokens = self.encoder.forward_features(windows)
        z = rearrange(tokens, "bt (h w) d -> bt d h w", h=H // s - j, w=W // s - j)
        # scene cell (u, v), u in [j, H / s - j), lies at map (u - dy, v - dx) of a frame offset by (dy, dx)
        z = window(z, j - off, n, m)
        return rearrange(z, "(b t) d h w -> b t d h w", b=B, t=T)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, C, H, W) -> the latents' maps (B, T, D, h, w): every cell of the encoder's map (or of
        its ``grid`` pooling), or with ``jitter`` in training the cells every jittered window sees."""
        B, T, _, H, W = x.shape
        if self.jitter and self.training:
            return self.jittered_maps(x)
        tokens = self.encoder.forward_features(x.flatten(0, 1))  # (B * T, N, D)
        h, w = map_shape(tokens.shape[1], H, W)
        z = rearrange(tokens, "bt (h w) d -> bt d h w", h=h, w=w)
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
