"""Context encoders: feature learning by inpainting (Pathak et al., arXiv:1604.07379).

A region of each image is dropped (set to zero after normalisation: the dataset mean) and the
encoder reads what is left. A decoder maps the encoder's feature map back to pixels: a channel-wise
fully connected layer (each channel's h*w cells to h*w cells, so information travels across the
map without the D*D*(hw)^2 weights of a full layer), a 1x1 convolution that mixes the channels, then
up-convolutions. The loss is L2 on the dropped region plus, weighted ``overlap_weight`` times, on a
border of ``overlap`` px of context around it: the paper predicts a patch slightly larger than the
hole so that the prediction joins its surroundings.

The decoder paints the whole frame and the loss reads only the hole and its border, so one decoder
serves every mask shape (the paper's centre decoder paints just the patch, one up-convolution
fewer). It is part of the objective, not of the encoder that the run saves.

The optional adversarial term (``adv_weight``, the paper's lambda_adv = 0.001 beside lambda_rec =
0.999) adds a small conv discriminator that tells real images from images with the painted hole
pasted in. The trainer has one optimiser, so the discriminator's loss is added to the objective's
loss with the painting detached (its gradient reaches only the discriminator), and the painter's
adversarial loss reads the discriminator through detached weights (its gradient reaches only the
encoder and decoder): one backward pass trains both players, each on its own loss.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.registry import OBJECTIVES

MASKS = ("center", "random_blocks", "random_region")
BLOCKS = 4  # random_blocks: this many squares, each a quarter of mask_area, placed independently (may overlap)
REGION_CELLS = 8  # random_region: smooth noise from an 8x8 grid per side, as the authors' pattern (17 px cells at 128 px)


@dataclasses.dataclass(frozen=True)
class ContextEncoderSettings:
    """The paper's settings for 128 px images: the central square of half the side is dropped
    (``mask_area`` 1/4), the prediction overlaps the context by 4 px (the authors' code) with a 10x
    weight there.
    ``mask``: "center" (the paper's main setting), "random_blocks" (squares at random places, up to
    ``mask_area`` of the image) or "random_region" (smooth random blobs covering ``mask_area``, the
    authors' random pattern in place of the paper's PASCAL segmentation shapes)."""

    mask: str = "center"
    mask_area: float = 0.25  # fraction of the image dropped; "center": a square of side sqrt(mask_area)
    overlap: int = 4  # px of context around the hole that the loss also scores
    overlap_weight: float = 10.0  # weight of the overlap border relative to the hole
    # Not in the paper: standardise the target over the scored pixels of each image and channel (as
    # MAE's normalised pixels), so the painting is scored on its pattern rather than its colours.
    norm_target: bool = False
    # lambda_adv; 0 turns the adversarial term and its discriminator off. Off by default: it sharpens the
    # paintings (the paper's Fig. 1) rather than the features, and costs a discriminator pass each step.
    adv_weight: float = 0.0


def center_mask(size: int, area: float, device=None) -> torch.Tensor:
    """(size, size) bool: the central square of side round(size * sqrt(area))."""
    side = round(size * math.sqrt(area))
    top = (size - side) // 2
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[top:top + side, top:top + side] = True
    return mask


def squares(tops: torch.Tensor, lefts: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """Union of squares of ``side`` px with top-left corners tops, lefts (B, K) -> (B, size, size) bool."""
    r = torch.arange(size, device=tops.device)
    rows = (r >= tops[..., None]) & (r < tops[..., None] + side)  # (B, K, size)
    cols = (r >= lefts[..., None]) & (r < lefts[..., None] + side)
    return (rows[..., :, None] & cols[..., None, :]).any(1)


def region_mask(noise: torch.Tensor, size: int, area: float) -> torch.Tensor:
    """Smooth random regions: low-resolution noise (B, g, g) upsampled bicubically to (size, size),
    the lowest round(area * size^2) values of each image dropped -> (B, size, size) bool."""
    field = F.interpolate(noise[:, None], size=(size, size), mode="bicubic", align_corners=False).flatten(1)
    k = max(1, round(area * size * size))
    threshold = field.kthvalue(k, dim=1, keepdim=True).values
    return (field <= threshold).view(-1, size, size)


def loss_weights(mask: torch.Tensor, overlap: int, overlap_weight: float) -> torch.Tensor:
    """(B, H, W) bool hole -> (B, H, W) float: 1 in the hole, ``overlap_weight`` on the context
    within ``overlap`` px of it (the max-norm distance: a frame around a square), 0 elsewhere."""
    hole = mask.float()
    if overlap == 0:
        return hole
    near = F.max_pool2d(hole[:, None], 2 * overlap + 1, stride=1, padding=overlap)[:, 0]
    return hole + overlap_weight * (near - hole)


def target_stats(target: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (B, C, 1, 1) of target (B, C, H, W) over each image's scored pixels (weights > 0)."""
    scored = (weights > 0).to(target.dtype)[:, None]  # (B, 1, H, W)
    n = scored.sum((2, 3), keepdim=True).clamp_min(1)
    mean = (target * scored).sum((2, 3), keepdim=True) / n
    var = ((target - mean).pow(2) * scored).sum((2, 3), keepdim=True) / n
    return mean, (var + 1e-6).sqrt()


def inpainting_l2(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted squared error over the scored pixels (weight > 0), averaged over them and the channels.
    pred, target (B, C, H, W); weights (B, H, W)."""
    scored = (weights > 0).sum() * pred.shape[1]
    return (weights[:, None] * (pred.float() - target.float()).pow(2)).sum() / scored.clamp_min(1)


class ChannelwiseFC(nn.Module):
    """Per channel, a fully connected layer from the h*w cells of the map to h*w cells (the paper's
    Sec. 3.1): tokens (B, N, D) -> (B, N, D), with D * N^2 weights."""

    def __init__(self, channels: int, cells: int):
        super().__init__()
        bound = 1 / math.sqrt(cells)  # nn.Linear's initialisation, per channel
        self.weight = nn.Parameter(torch.empty(channels, cells, cells).uniform_(-bound, bound))  # (D, N_in, N_out)
        self.bias = nn.Parameter(torch.empty(cells, channels).uniform_(-bound, bound))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,dnm->bmd", tokens, self.weight) + self.bias


class InpaintingDecoder(nn.Module):
    """Feature map tokens (B, h*w, D) -> pixels (B, channels, h * 2^k, w * 2^k): channel-wise FC,
    a 1x1 convolution across channels, then k stride-2 up-convolutions, halving the width each time."""

    def __init__(self, dim: int, grid: tuple[int, int], upsamplings: int, channels: int = 3):
        super().__init__()
        self.grid = grid
        self.fc = ChannelwiseFC(dim, grid[0] * grid[1])
        self.mix = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                 nn.ReLU(inplace=True))
        layers, width = [], dim
        for k in range(upsamplings):
            last = k == upsamplings - 1
            out = channels if last else max(16, width // 2)
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        self.up = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        z = rearrange(self.fc(tokens), "b (h w) d -> b d h w", h=h, w=w)
        return self.up(self.mix(z))


class Discriminator(nn.Module):
    """DCGAN-style: 4x4 stride-2 convolutions with LeakyReLU(0.2), doubling the width from 32, down to a
    4x4 map (or 1 px), then one logit per image. No BatchNorm (the paper's has it): the painter's pass
    reads this net through detached weights and must leave no running statistics behind."""

    def __init__(self, size: int, channels: int = 3, width: int = 32):
        super().__init__()
        layers, c = [], channels
        while size > 4:
            layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c, width, size = width, width * 2, size // 2
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(c * size * size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B,) logits of "real"."""
        return self.logit(self.features(x).flatten(1))[:, 0]


@OBJECTIVES.register("context_encoder")
class ContextEncoder(Objective):
    Settings: ClassVar[type] = ContextEncoderSettings
    single_view = True
    extra_metrics: ClassVar[tuple[str, ...]] = ("l2", "adv_g", "adv_d")

    def __init__(self, encoder: nn.Module, *, image_size: int, mask: str = "center", mask_area: float = 0.25,
                 overlap: int = 4, overlap_weight: float = 10.0, norm_target: bool = False, adv_weight: float = 0.0):
        """
        Args:
            encoder: a convolutional image encoder with ``forward_features``, ``embed_dim`` and ``stride``
                (the decoder reshapes its tokens into the feature map).
            image_size: side of the square images the objective reads (not a setting: the task's crop size).
        """
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, not '{mask}'")
        if not 0 < mask_area < 1 or overlap < 0 or overlap_weight < 0 or not 0 <= adv_weight < 1:
            raise ValueError(f"context_encoder needs 0 < mask_area < 1, overlap >= 0, overlap_weight >= 0 and "
                             f"0 <= adv_weight < 1, not {mask_area}, {overlap}, {overlap_weight}, {adv_weight}")
        stride = getattr(encoder, "stride", None)
        if not isinstance(stride, int) or stride & (stride - 1) or image_size % stride:
            raise ValueError(f"the decoder needs a conv encoder whose stride (a power of two, here {stride}) "
                             f"divides image_size ({image_size})")
        self.encoder, self.image_size, self.mask = encoder, image_size, mask
        self.mask_area, self.overlap, self.overlap_weight = mask_area, overlap, overlap_weight
        self.norm_target, self.adv_weight = norm_target, adv_weight
        self.discriminator = Discriminator(image_size) if adv_weight > 0 else None
        cells = image_size // stride
        self.decoder = InpaintingDecoder(encoder.embed_dim, (cells, cells), stride.bit_length() - 1, channels=3)

    def draw_masks(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B, S, S) bool, True where the image is dropped; random draws from torch's generator
        (seeded by the trainer, restored on resume)."""
        S = self.image_size
        if self.mask == "center":
            return center_mask(S, self.mask_area, device).expand(batch, S, S)
        if self.mask == "random_blocks":
            side = max(1, round(S * math.sqrt(self.mask_area / BLOCKS)))
            corners = torch.randint(0, S - side + 1, (2, batch, BLOCKS), device=device)
            return squares(corners[0], corners[1], side, S)
        return region_mask(torch.rand(batch, REGION_CELLS, REGION_CELLS, device=device), S, self.mask_area)

    def inpaint(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, S, S) -> the masks (B, S, S), the encoder's tokens of the masked images (B, N, D)
        and the decoder's painting (B, C, S, S)."""
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"context_encoder expects images (B, C, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        masks = self.draw_masks(x.shape[0], x.device)
        tokens = self.encoder.forward_features(x.masked_fill(masks[:, None], 0.0))  # 0: the mean, after normalisation
        return masks, tokens, self.decoder(tokens)

    def forward(self, batch: dict) -> dict:
        """batch["input"] = (B, C, S, S) normalised images. Returns loss (the weighted L2) and std; with
        adv_weight > 0 the loss is (1 - adv_weight) l2 + adv_weight adv_g + adv_d, each term logged."""
        x = batch["input"]
        masks, tokens, pred = self.inpaint(x)
        weights = loss_weights(masks, self.overlap, self.overlap_weight)
        if self.norm_target:
            mu, sigma = target_stats(x, weights)
            x = (x - mu) / sigma
        l2 = inpainting_l2(pred, x, weights)
        std = embedding_std(self.encoder.pool(tokens).detach())
        if self.discriminator is None:
            return {"loss": l2, "std": std}
        adv_g, adv_d = self.adversarial(batch["input"], self.unnormalise(pred, batch["input"], weights), masks)
        loss = (1 - self.adv_weight) * l2 + self.adv_weight * adv_g + adv_d
        return {"loss": loss, "l2": l2.detach(), "adv_g": adv_g.detach(), "adv_d": adv_d.detach(), "std": std}

    def unnormalise(self, pred: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The painting in x's units (undoes ``norm_target``'s per-image standardisation)."""
        if not self.norm_target:
            return pred
        mean, std = target_stats(x, weights)
        return pred * std + mean

    def adversarial(self, x: torch.Tensor, pred: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The painter's loss -log D(fake) (gradient to the painter only) and the discriminator's
        -log D(real) - log(1 - D(fake)) (gradient to the discriminator only); fake is x with the hole painted."""
        fake = torch.where(masks[:, None], pred.to(x.dtype), x)
        real_logits, fake_logits = self.discriminator(torch.cat([x, fake.detach()])).float().chunk(2)
        adv_d = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                 + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        g_logits = functional_call(self.discriminator, frozen, (fake,)).float()
        adv_g = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        return adv_g, adv_d

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> dict:
        """For plots: x, x with the hole at the mean, and x with the hole painted; all shaped like x."""
        masks, _, pred = self.inpaint(x)
        pred = self.unnormalise(pred, x, loss_weights(masks, self.overlap, self.overlap_weight))
        hole = masks[:, None]
        return {"original": x, "masked": x.masked_fill(hole, 0.0), "reconstruction": torch.where(hole, pred.to(x.dtype), x)}
