"""Vision Transformer over patches, spectrogram patches or video tubelets.

ViT (arXiv:2010.11929) in the form MAE uses it (arXiv:2111.06377): a linear
patch embedding, fixed sin-cos positions on the patch grid laid out as MAE's
released table, pre-norm blocks and a final LayerNorm on every token. The pooled
feature is the mean of the normalised patch tokens (what MAE's pre-training
encoder and transformers' ``ViTMAEModel.last_hidden_state`` give, averaged), or
with ``cls_token`` and ``pool="cls"`` the normalised class token (timm's default
``global_pool="token"``). MAE fine-tuning's other order, average then a fresh
LayerNorm (``fc_norm``), is not offered: every token of the map stays normalised,
which the MAE decoder and the dense readouts rely on.
Any number of patched axes works through ``Patchify``: (H, W) for images and
spectrograms, (T, H, W) for video tubelets (VideoMAE, arXiv:2203.12602).

Besides the encoder interface it exposes the hooks MAE needs to run the
encoder on a subset of tokens: ``patchify``, ``grid``, ``num_patches``,
``embed`` and ``forward_tokens``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.config import ConfigError
from mmssl.encoders.patchify import Patchify
from mmssl.encoders.transformer import Block, init_weights
from mmssl.registry import ENCODERS

# size -> (dim, depth, heads), as DeiT / MAE name them
PRESETS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


POS_LAYOUTS = ("mae", "grid")


@dataclasses.dataclass(frozen=True)
class ViTSettings:
    """The ViT a task config names in ``encoder.vit`` (``encoder.vit.dim=192``); the task gives the
    input size and channels. Images, spectrograms and video tubelets share it.

    ``patch``: one size per patched axis ((pt, ph, pw) for video, (mels, frames) for
    spectrograms), or a single size for every axis (``encoder.vit.patch=16``).
    """

    size: str = "tiny"  # tiny | small | base (see PRESETS); dim / depth / heads override it
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch: tuple[int, ...] = (4,)
    # Layout options a checkpoint given to --init may need (timm / transformers ViTs have a class
    # token and learned positions): pos_embed sincos | learned; pool mean | cls (with cls_token).
    cls_token: bool = False
    pos_embed: str = "sincos"
    pool: str = "mean"

    def patch_for(self, axes: int) -> list[int]:
        """The patch size per axis of an input with ``axes`` patched axes."""
        if len(self.patch) not in (1, axes) or min(self.patch, default=0) < 1:
            raise ConfigError(f"encoder.vit.patch must be one positive size or {axes} (one per axis), "
                              f"not {','.join(map(str, self.patch))}")
        return list(self.patch) * axes if len(self.patch) == 1 else list(self.patch)

    def sizes(self) -> dict:
        """Preset and overrides, the constructor arguments every ViT-based encoder takes."""
        if self.size not in PRESETS:
            raise ConfigError(f"encoder.vit.size must be one of {', '.join(PRESETS)}, not '{self.size}'")
        return {"size": self.size, "dim": self.dim, "depth": self.depth, "heads": self.heads}

    def spec(self, input_size: Sequence[int], channels: int) -> dict:
        """The ``vit`` registry spec for inputs (B, channels, *input_size)."""
        if self.pos_embed not in ("sincos", "learned") or self.pool not in ("mean", "cls") or (
                self.pool == "cls" and not self.cls_token):
            raise ConfigError(f"encoder.vit.pos_embed must be sincos or learned and encoder.vit.pool mean or cls "
                              f"(with encoder.vit.cls_token=true), not '{self.pos_embed}', '{self.pool}'")
        return {"name": "vit", "kwargs": {
            "size": self.size, "input_size": list(input_size), "patch": self.patch_for(len(input_size)),
            "channels": channels, **self.sizes(), "cls_token": self.cls_token, "pos_embed": self.pos_embed,
            "pool": self.pool}}


def sincos_pos_embed(grid: Sequence[int], dim: int, layout: str = "mae") -> torch.Tensor:
    """Fixed sin-cos position embedding of an N-D patch grid (MAE, arXiv:2111.06377).

    Each axis gets an equal share of the channels: sines then cosines of its integer
    coordinate at frequencies 1 / 10000^(j / half), j < half = dim // (2 * len(grid)).

    ``layout`` orders the axes' shares. "mae": the last (fastest) axis first, so a 2-D
    (h, w) grid gives [sin_w | cos_w | sin_h | cos_h], the table of MAE's released
    ``get_2d_sincos_pos_embed`` (its meshgrid puts the width coordinate first) that MAE,
    timm and transformers' ViTMAE checkpoints carry; a (t, h, w) tubelet grid gives
    [w | h | t] and a (F, T) spectrogram grid [T | F], as AudioMAE's version of the same
    code. "grid": the axes in grid order ([sin_h | cos_h | sin_w | cos_w]), the table
    encoders saved before ``pos_layout`` existed were trained with. Channels left over when
    ``dim`` is not a multiple of 2 * len(grid) are zero.

    Args:
        grid: patches per axis, (g_0, ..., g_{n-1}).
        dim: embedding width.
        layout: "mae" or "grid".
    Returns:
        (prod(grid), dim) float32, rows in the row-major token order of ``Patchify``.
    """
    if layout not in POS_LAYOUTS:
        raise ValueError(f"pos_layout must be one of {', '.join(POS_LAYOUTS)}, not {layout!r}")
    half = dim // (2 * len(grid))  # frequencies per axis
    if half < 1:
        raise ValueError(f"dim {dim} is too small for sin-cos positions on a {len(grid)}-axis grid")
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # (half,)
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    if layout == "mae":
        coords = coords[::-1]
    parts = []
    for c in coords:
        angle = c.reshape(-1, 1) * omega  # (N, half)
        parts += [angle.sin(), angle.cos()]
    pe = torch.cat(parts, dim=1)  # (N, 2 * half * n)
    return F.pad(pe, (0, dim - pe.shape[1])).float()


def resample_positions(table: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """A learned position table (1, prod(grid), D) interpolated onto another grid -> (1, prod(new_grid), D)
    (bicubic in 2-D as timm and DINO resample theirs, (tri)linear otherwise)."""
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(grid)]
    x = table.transpose(1, 2).reshape(1, table.shape[2], *grid)  # (1, D, *grid)
    x = F.interpolate(x, size=tuple(new_grid), mode=mode, align_corners=False)
    return x.flatten(2).transpose(1, 2)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Tokens x (B, N, D), or (1, N, D) shared by the batch, at indices ids (B, K) -> (B, K, D)."""
    return torch.gather(x.expand(ids.shape[0], -1, -1), 1, ids[..., None].expand(-1, -1, x.shape[2]))


@ENCODERS.register("vit")
class ViT(nn.Module):
    """Patches (B, C, *input_size) -> tokens (B, P + N, D), N = prod(input_size / patch), P = 1 with
    ``cls_token`` (the class token comes first) and 0 without.

    Args:
        size: preset "tiny" (192 wide, 12 layers, 3 heads), "small" (384, 12, 6) or "base" (768, 12, 12).
        input_size: sizes of the patched axes: (H, W) for images, (F, T) for spectrograms,
            (T, H, W) for video. Other sizes divisible by the patch also work: positions are the
            sin-cos table of whatever grid the input gives (a learned table is interpolated).
        patch: patch size per axis, same length as ``input_size`` ((pt, ph, pw) tubelets for video).
        channels: input channels C (3 for RGB, 1 for spectrograms).
        dim, depth, heads: override the preset's width, number of blocks and heads.
        mlp_ratio: MLP hidden width / dim.
        pos_embed: "sincos" (fixed, rebuilt rather than saved) or "learned" (a parameter that
            starts as the sin-cos table, as timm's and transformers' ViT checkpoints carry).
        pos_layout: channel order of the sin-cos table, "mae" or "grid" (see ``sincos_pos_embed``).
        cls_token: prepend a learned class token after masking, as MAE does.
        pool: "mean" (of the patch tokens) or "cls" (the class token; needs ``cls_token``).
    """

    # What a config.json written before these fields existed implies (io.load_encoder reads it):
    # those encoders were trained with positions in grid order.
    legacy_kwargs: ClassVar[dict[str, Any]] = {"pos_layout": "grid"}

    def __init__(self, size: str = "tiny", input_size: Sequence[int] = (32, 32), patch: Sequence[int] = (4, 4),
                 channels: int = 3, dim: int | None = None, depth: int | None = None, heads: int | None = None,
                 mlp_ratio: float = 4.0, pos_embed: str = "sincos", pos_layout: str = "mae", cls_token: bool = False,
                 pool: str = "mean"):
        super().__init__()
        if size not in PRESETS:
            raise ValueError(f"unknown ViT size {size!r}; known: {', '.join(PRESETS)}")
        if len(input_size) != len(patch):
            raise ValueError(f"input_size {list(input_size)} and patch {list(patch)} must have the same length")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', not {pos_embed!r}")
        if pool not in ("mean", "cls") or (pool == "cls" and not cls_token):
            raise ValueError(f"pool must be 'mean' or 'cls' (with cls_token=true), not {pool!r}")
        p_dim, p_depth, p_heads = PRESETS[size]
        dim = p_dim if dim is None else dim
        depth = p_depth if depth is None else depth
        heads = p_heads if heads is None else heads
        self.patchify = Patchify(patch, channels)
        self.grid = self.patchify.grid(input_size)
        self.num_patches = math.prod(self.grid)
        self.embed_dim = dim
        self.pos_kind, self.pos_layout, self.pool_kind = pos_embed, pos_layout, pool
        self.patch_embed = nn.Linear(self.patchify.patch_dim, dim)
        table = sincos_pos_embed(self.grid, dim, pos_layout)[None]  # (1, N, D)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(table)
        else:  # a buffer, not a parameter: a function of the grid, so it is rebuilt rather than saved
            self.register_buffer("pos_embed", table, persistent=False)
        self.num_prefix_tokens = int(cls_token)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if cls_token else None  # MAE's init
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        init_weights(self)

    def positions(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The position table (1, prod(grid), D) of a patch grid."""
        if grid == self.grid:
            return self.pos_embed
        if self.pos_kind == "learned":
            return resample_positions(self.pos_embed, self.grid, grid)
        return sincos_pos_embed(grid, self.embed_dim, self.pos_layout).to(self.pos_embed.device)[None]

    def embed(self, x: torch.Tensor, patches: torch.Tensor | None = None,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, *input_size) -> patch tokens plus positions (B, N, D), before any block
        (and without the class token, which ``forward_tokens`` adds).

        Args:
            patches: ``patchify.to_patches(x)`` when the caller has it already (MAE's target).
            keep: (B, K) token indices: only those patches are embedded, giving (B, K, D)
                (MAE's visible tokens; the same values as embedding all and then gathering).
        """
        grid = self.patchify.grid(x.shape)
        patches = self.patchify.to_patches(x) if patches is None else patches  # (B, N, P)
        # Another input size (e.g. SwAV's small local crops) gets the table of its own grid.
        pos = self.positions(grid)
        if keep is not None:
            patches, pos = gather_tokens(patches, keep), gather_tokens(pos, keep)
        tokens = self.patch_embed(patches)
        return tokens + pos.to(tokens.dtype)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class token (if any), blocks and final norm on any subset of embedded tokens:
        (B, N', D) -> (B, P + N', D)."""
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *input_size) -> tokens (B, P + N, D), the class token first when there is one."""
        return self.forward_tokens(self.embed(x))

    @property
    def stride(self) -> int:
        """Pixels per token along the image width: the spatial stride of ``feature_map``."""
        return self.patchify.patch[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens laid out on their grid, channels first: (B, C, H, W) -> (B, D, h, w), or
        (B, C, T, H, W) -> (B, D, t, h, w) for tubelets; dense tasks (tracking) read it."""
        grid = self.patchify.grid(x.shape)
        tokens = self.forward_features(x)[:, self.num_prefix_tokens:]  # (B, N, D), row-major over the grid
        return tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *grid)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, D): the mean patch token (MAE's global pooling), or the class token."""
        if self.pool_kind == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
