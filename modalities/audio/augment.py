"""Waveform augmentations for two-view audio objectives (SimCLR on audio).

Each draws its randomness from the per-item ``torch.Generator`` only, so a
batch is a pure function of the run's seed and the batch index.
"""
from __future__ import annotations

import numpy as np
import torch

from mmssl.modalities.audio.data import random_crop


def augment(wav: torch.Tensor, gen: torch.Generator, gain_db: float = 6.0, snr_db: tuple[float, float] = (10.0, 40.0),
            time_masks: int = 1, max_mask: float = 0.1) -> torch.Tensor:
    """Random gain (+-gain_db), white noise at a random SNR, and ``time_masks`` zeroed spans
    of up to ``max_mask`` of the crop (as SpecAugment's time masks, on the waveform).

    wav (L,) -> (L,).
    """
    u = torch.rand(3 + 2 * time_masks, generator=gen)
    wav = wav * 10 ** ((2 * u[0] - 1) * gain_db / 20)
    power = wav.pow(2).mean().clamp_min(1e-10)
    snr = snr_db[0] + (snr_db[1] - snr_db[0]) * u[1]
    noise = torch.randn(wav.shape, generator=gen)
    wav = wav + noise * torch.sqrt(power / 10 ** (snr / 10))
    length = len(wav)
    for i in range(time_masks):
        span = int(u[3 + 2 * i] * max_mask * length)
        start = int(u[4 + 2 * i] * (length - span)) if span < length else 0
        wav = torch.cat([wav[:start], wav.new_zeros(span), wav[start + span :]])
    return wav


def two_crops(audio: np.ndarray, length: int, gen: torch.Generator, **augment_kwargs) -> list[torch.Tensor]:
    """Two independently placed and augmented crops of one utterance: a positive pair."""
    return [augment(random_crop(audio, length, gen), gen, **augment_kwargs) for _ in range(2)]
