"""Masked autoencoder (He et al., arXiv:2111.06377).

Most patch tokens are dropped at random (argsort of uniform noise), the
encoder runs on the visible ones only, and a light decoder fills the rest
with a learned mask token, adds positions and predicts every patch's values;
the loss is the squared error on the masked patches (``loss_on_visible``: on all), against targets
normalised per patch. ``masking="tube"`` masks the same spatial positions at
every time index of a (t, h, w) grid (VideoMAE, arXiv:2203.12602), so a
masked patch cannot be copied from its neighbour in time.

The encoder must expose the hooks of ``mmssl.encoders.vit.ViT``: ``patchify``,
``grid``, ``num_patches``, ``embed`` and ``forward_tokens``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from mmssl.encoders.vit import Block, gather_tokens, init_weights, sincos_pos_embed
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.registry import OBJECTIVES

HOOKS = ("patchify", "grid", "num_patches", "embed", "forward_tokens")


def mask_ids(batch: int, num: int, ratio: float, noise: torch.Tensor | None = None, device=None):
    """Which tokens stay visible: the round(N * (1 - ratio)) with the smallest noise, in noise order.

    Returns:
        ids_keep (B, N_keep), the visible token indices; mask (B, N), 1 = masked, in the original
        order; ids_restore (B, N), the permutation that undoes the shuffle.
    """
    if noise is None:
        noise = torch.rand(batch, num, device=device)
    keep = round(num * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num, device=noise.device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


def random_masking(tokens: torch.Tensor, ratio: float, noise: torch.Tensor | None = None):
    """Keep the round(N * (1 - ratio)) tokens with the smallest noise, in noise order.

    Args:
        tokens: (B, N, D).
        ratio: fraction of tokens masked.
        noise: (B, N) scores; uniform from the global RNG when None.
    Returns:
        visible (B, N_keep, D); mask (B, N), 1 = masked, in the original order;
        ids_restore (B, N), the permutation that undoes the shuffle.
    """
    ids_keep, mask, ids_restore = mask_ids(tokens.shape[0], tokens.shape[1], ratio, noise, tokens.device)
    return gather_tokens(tokens, ids_keep), mask, ids_restore


@dataclasses.dataclass(frozen=True)
class MAESettings:
    """MAE's settings, defaults from the paper (arXiv:2111.06377): 75% of the patches masked, a
    512-d decoder of 8 blocks with 16 heads, targets normalised per patch (norm_pix_loss), the loss on
    the masked patches only (``loss_on_visible`` adds the visible ones, the variant the paper sets aside)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    loss_on_visible: bool = False


@OBJECTIVES.register("mae")
class MAE(Objective):
    Settings: ClassVar[type] = MAESettings
    single_view = True

    def __init__(self, encoder: nn.Module, *, mask_ratio: float = MAESettings.mask_ratio,
                 decoder_dim: int = MAESettings.decoder_dim, decoder_depth: int = MAESettings.decoder_depth,
                 decoder_heads: int = MAESettings.decoder_heads, norm_pix_loss: bool = MAESettings.norm_pix_loss,
                 loss_on_visible: bool = MAESettings.loss_on_visible, masking: str = "random"):
        """
        Args:
            encoder: a ViT-like encoder with the hooks in ``HOOKS``.
            mask_ratio: fraction of patches masked, in (0, 1).
            decoder_dim, decoder_depth, decoder_heads: width, blocks and heads of the decoder.
            norm_pix_loss: targets are each patch's values normalised by its own mean and std.
            loss_on_visible: the loss averages over every patch, the visible ones too, rather than
                over the masked ones only.
            masking: "random" (per token) or "tube" (per spatial position, over a (t, h, w) grid);
                not a setting: it follows from the task's input (tube for video, arXiv:2203.12602).
        """
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), not {mask_ratio}")
        if masking not in ("random", "tube"):
            raise ValueError(f"masking must be 'random' or 'tube', not {masking!r}")
        missing = [h for h in HOOKS if not hasattr(encoder, h)]
        if missing:
            raise ValueError(f"MAE needs an encoder with {', '.join(HOOKS)} (e.g. 'vit'); "
                             f"{type(encoder).__name__} lacks {', '.join(missing)}")
        if masking == "tube" and len(encoder.grid) != 3:
            raise ValueError(f"tube masking needs a (t, h, w) patch grid, the encoder has {list(encoder.grid)}")
        self.encoder = encoder
        self.mask_ratio, self.norm_pix_loss, self.masking = mask_ratio, norm_pix_loss, masking
        self.loss_on_visible = loss_on_visible
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(encoder.grid, decoder_dim)[None],
                             persistent=False)  # (1, N, Dd)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, encoder.patchify.patch_dim)
        init_weights(self.decoder_embed)
        init_weights(self.decoder_pred)
        nn.init.normal_(self.mask_token, std=0.02)

    def mask_ids(self, batch: int, device: torch.device):
        """This objective's masking for a batch: ids_keep (B, N_keep), mask (B, N), ids_restore (B, N)."""
        num = self.encoder.num_patches
        if self.masking == "random":
            return mask_ids(batch, num, self.mask_ratio, device=device)
        t, h, w = self.encoder.grid
        spatial = torch.rand(batch, h * w, device=device)
        # Equal noise for a position at every t, and a number kept that is a multiple of t,
        # so whole tubes are kept or dropped.
        keep = round(h * w * (1 - self.mask_ratio))
        return mask_ids(batch, num, 1 - keep / (h * w), repeat(spatial, "b s -> b (t s)", t=t))

    def mask(self, tokens: torch.Tensor):
        """The masking applied to tokens: (B, N, D) -> visible (B, N_keep, D), mask, ids_restore."""
        ids_keep, mask, ids_restore = self.mask_ids(tokens.shape[0], tokens.device)
        return gather_tokens(tokens, ids_keep), mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, patches: torch.Tensor | None = None):
        """x -> latent (B, N_keep, D) of the visible tokens, mask (B, N), ids_restore (B, N).
        Only the visible patches are embedded. ``patches``: ``to_patches(x)`` if the caller has
        made it (then x is not patchified twice)."""
        ids_keep, mask, ids_restore = self.mask_ids(x.shape[0], x.device)
        visible = self.encoder.embed(x, patches, keep=ids_keep)
        return self.encoder.forward_tokens(visible), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, masked_only: bool = False,
                        ids_shuffle: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B, P + N_keep, D), P class tokens first -> predicted patches (B, N, patch_dim) in the original token order;
        with ``masked_only``, (B, N - N_keep, patch_dim) for the masked tokens only, in shuffle order
        (at positions ``ids_restore.argsort(1)[:, N_keep:]``), and the head skips the visible ones.

        The decoder runs in shuffle order (visible tokens first, then mask tokens), each token with
        its own position embedding: attention does not depend on the order of its tokens, so nothing
        needs unshuffling before the blocks. ``ids_shuffle``: ``ids_restore.argsort(1)`` when the
        caller has it already.
        """
        y = self.decoder_embed(latent)  # (B, P + N_keep, Dd), P class tokens first
        prefix = getattr(self.encoder, "num_prefix_tokens", 0)
        (B, N), keep = ids_restore.shape, y.shape[1] - prefix
        if ids_shuffle is None:
            ids_shuffle = ids_restore.argsort(dim=1)  # (B, N): visible positions, then masked ones
        pos = gather_tokens(self.decoder_pos_embed.to(y.dtype), ids_shuffle)  # (B, N, Dd), shuffle order
        pos = F.pad(pos, (0, 0, prefix, 0))  # the class token has no position, as in MAE
        y = torch.cat([y, self.mask_token.to(y.dtype).expand(B, N - keep, -1)], dim=1) + pos
        for block in self.decoder_blocks:
            y = block(y)
        y = y[:, prefix:]  # (B, N, Dd)
        if masked_only:
            return self.decoder_pred(self.decoder_norm(y[:, keep:]))
        pred = self.decoder_pred(self.decoder_norm(y))  # (B, N, P) shuffled
        return gather_tokens(pred, ids_restore)

    @staticmethod
    def patch_stats(patches: torch.Tensor):
        """Per-patch mean and std (B, N, 1) of (B, N, P); unbiased variance + 1e-6, as the MAE code."""
        var, mean = torch.var_mean(patches, dim=-1, keepdim=True)
        return mean, (var + 1e-6).sqrt()

    def forward(self, batch: dict) -> dict:
        x = batch["input"]  # (B, C, H, W), (B, 1, F, T) or (B, C, T, H, W)
        target = self.encoder.patchify.to_patches(x)  # (B, N, P)
        latent, _mask, ids_restore = self.forward_encoder(x, target)
        if self.loss_on_visible:  # every patch predicted, in the original order
            pred = self.forward_decoder(latent, ids_restore)  # (B, N, P)
        else:
            # Every example masks the same number of tokens: the masked positions in shuffle order.
            ids_shuffle = ids_restore.argsort(dim=1)  # (B, N): visible positions, then masked ones
            keep = latent.shape[1] - getattr(self.encoder, "num_prefix_tokens", 0)  # without the class token
            masked = ids_shuffle[:, keep:]  # (B, M)
            pred = self.forward_decoder(latent, ids_restore, masked_only=True, ids_shuffle=ids_shuffle)  # (B, M, P)
            target = gather_tokens(target, masked)  # (B, M, P)
        if self.norm_pix_loss:
            mean, std = self.patch_stats(target)
            target = (target - mean) / std
        # the mean over the scored patches of each one's mean squared error (equal counts per example)
        loss = F.mse_loss(pred.float(), target.float())
        return {"loss": loss, "std": embedding_std(self.encoder.pool(latent))}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> dict:
        """For plots: x, x with the masked patches zeroed, and x with them predicted; all shaped like x."""
        latent, mask, ids_restore = self.forward_encoder(x)
        pred = self.forward_decoder(latent, ids_restore).to(x.dtype)
        patches = self.encoder.patchify.to_patches(x)
        if self.norm_pix_loss:  # back to pixel units with each patch's own statistics
            mean, std = self.patch_stats(patches)
            pred = pred * std + mean
        masked = mask[..., None].bool()  # (B, N, 1)
        unpatch, grid = self.encoder.patchify.from_patches, self.encoder.grid
        return {"original": x, "masked": unpatch(patches.masked_fill(masked, 0), grid),
                "reconstruction": unpatch(torch.where(masked, pred, patches), grid)}
