"""Waveform augmentations for two-view audio objectives (SimCLR on audio), made on whole batches.

A DataLoader worker cuts the crop and draws each crop's parameters with the item's own
``torch.Generator`` (``draw_params``): a gain in dB, an SNR in dB, a noise seed and the time
masks' starts and widths, as small tensors. ``augment_batch`` then applies them to a whole
batch on the device. The noise is a counter-based function of (noise seed, sample position)
(``hashed_normal``), so a crop's view depends on its parameters alone: not on the batch it
shares, the worker that made it, the device or how many processes split the global batch.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from einops import rearrange

from mmssl.config import ConfigError
from mmssl.modalities.audio.data import random_crop
from mmssl.modalities.hashing import MASK32, hashed_bits


def hashed_normal(seeds: torch.Tensor, length: int) -> torch.Tensor:
    """Standard normal noise as a pure function of (seed, position): long (N,) -> float32 (N, length).

    Counter-based, like Philox (``mmssl.modalities.hashing.hashed_bits`` on the seed's low 32 bits):
    row n hashes the counters 0, 1, 2, ... through a map of its own, ``mix32(a_n * counter + b_n mod
    2**32)`` with a_n odd and b_n derived from the seed, into uniforms; Box-Muller turns each pair into two normals (positions 2k and 2k + 1). Distinct seeds give distinct affine
    maps, so no two rows share a (shifted) stream. A row is the same whatever else is in the
    batch and on every device: the integer arithmetic is exact, only the final float maths may
    round differently between CPU and GPU kernels.
    """
    pairs = (length + 1) // 2
    bits = hashed_bits(seeds.long() & MASK32, 2 * pairs)  # (N, 2 * pairs)
    u = ((bits >> 8).float() + 0.5) * 2.0**-24  # 24 bits: exact in float32, in (0, 1)
    radius, angle = torch.sqrt(-2 * torch.log(u[:, 0::2])), 2 * math.pi * u[:, 1::2]  # (N, pairs)
    # positions 2k and 2k + 1 share pair k, so position t depends on (seed, t) alone, whatever the length
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)  # (N, pairs, 2)
    return z.flatten(1)[:, :length]


def draw_params(gen: torch.Generator, length: int, gain_db: float = 6.0, snr_db: tuple[float, float] = (10.0, 40.0),
                time_masks: int = 1, max_mask: float = 0.1) -> dict[str, torch.Tensor]:
    """One crop's random parameters: a gain uniform in +-gain_db, white noise at an SNR uniform in
    ``snr_db`` (seeded by ``noise_seed``), and ``time_masks`` zeroed spans, each of a width uniform
    in [0, max_mask * length) samples at a uniform start inside the crop (SpecAugment's time
    masks, on the waveform).

    Returns: {"gain_db": () float, "snr_db": () float, "noise_seed": () long,
    "mask_start": (time_masks,) long, "mask_width": (time_masks,) long}.
    """
    u = torch.rand(2 + 2 * time_masks, generator=gen, dtype=torch.float64)
    seed = torch.randint(2**31, (), generator=gen)
    width = (u[2::2] * max_mask * length).long().clamp(max=length)
    start = (u[3::2] * (length - width)).long()
    return {"gain_db": ((2 * u[0] - 1) * gain_db).float(), "snr_db": (snr_db[0] + (snr_db[1] - snr_db[0]) * u[1]).float(),
            "noise_seed": seed, "mask_start": start, "mask_width": width}


def apply_gain(wav: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """(N, L) scaled by 10 ** (gain_db / 20), gain_db (N,)."""
    return wav * 10 ** (gain_db[:, None] / 20)


def add_noise(wav: torch.Tensor, snr_db: torch.Tensor, noise_seed: torch.Tensor) -> torch.Tensor:
    """(N, L) plus white Gaussian noise whose power is the row's power over 10 ** (snr_db / 10)."""
    power = wav.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    noise = hashed_normal(noise_seed, wav.shape[1]).to(wav.dtype)
    return wav + noise * torch.sqrt(power / 10 ** (snr_db[:, None] / 10))


def time_mask(wav: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """(N, L) with samples [start_m, start_m + width_m) zeroed for every mask m; start, width (N, M)."""
    t = torch.arange(wav.shape[1], device=wav.device)
    inside = (t >= start[..., None]) & (t < (start + width)[..., None])  # (N, M, L)
    return wav.masked_fill(inside.any(dim=1), 0.0)


def augment_batch(wav: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gain, then noise at the SNR of the gained crop, then time masks, for a batch of crops:
    wav (N, L) with ``draw_params``' tensors stacked to (N, ...) -> (N, L)."""
    wav = apply_gain(wav.float(), params["gain_db"])
    wav = add_noise(wav, params["snr_db"], params["noise_seed"])
    return time_mask(wav, params["mask_start"], params["mask_width"])


@dataclasses.dataclass(frozen=True)
class AudioViewSettings:
    """Each crop's random changes (the ``views`` section of a two-view audio task): a gain uniform in
    +-``gain_db``, white noise at an SNR uniform in [``min_snr_db``, ``max_snr_db``], and ``time_masks``
    zeroed spans of up to ``max_mask`` of the crop each."""

    gain_db: float = 6.0
    min_snr_db: float = 10.0
    max_snr_db: float = 40.0
    time_masks: int = 1
    max_mask: float = 0.1

    def check(self) -> None:
        """One ConfigError for the first bad setting."""
        if self.gain_db < 0:
            raise ConfigError(f"views.gain_db must be >= 0, got {self.gain_db}")
        if self.min_snr_db > self.max_snr_db:
            raise ConfigError(f"views: need min_snr_db <= max_snr_db, got {self.min_snr_db} and {self.max_snr_db}")
        if self.time_masks < 0:
            raise ConfigError(f"views.time_masks must be >= 0, got {self.time_masks}")
        if not 0.0 <= self.max_mask < 1.0:
            raise ConfigError(f"views.max_mask is a share of the crop in [0, 1), got {self.max_mask}")

    def params(self) -> dict:
        """``draw_params``' keyword arguments."""
        return {"gain_db": self.gain_db, "snr_db": (self.min_snr_db, self.max_snr_db), "time_masks": self.time_masks,
                "max_mask": self.max_mask}


def two_crops(audio: np.ndarray, length: int, gen: torch.Generator, **param_kwargs) -> dict[str, torch.Tensor]:
    """Two independently placed crops of one utterance (a positive pair, once augmented) and
    their parameters: {"crops": (2, L), and each of ``draw_params``' keys with a leading 2}."""
    crops, params = [], []
    for _ in range(2):
        crops.append(random_crop(audio, length, gen))
        params.append(draw_params(gen, length, **param_kwargs))
    return {"crops": torch.stack(crops), **{k: torch.stack([p[k] for p in params]) for k in params[0]}}


def augment_pairs(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """A collated batch of ``two_crops`` items, {"crops": (B, 2, L) and parameters (B, 2, ...)} ->
    its two views [x0, x1], each (B, L), augmented on whatever device the batch is on. The items'
    "index" (B,), which every batch carries, is not a parameter."""
    params = {k: rearrange(v, "b v ... -> (b v) ...") for k, v in batch.items() if k not in ("crops", "index")}
    views = augment_batch(rearrange(batch["crops"], "b v l -> (b v) l"), params)
    return list(rearrange(views, "(b v) l -> v b l", v=2))
