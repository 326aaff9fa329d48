"""Strided 1-D convolution encoder for raw waveforms (CPC, arXiv:1807.03748).

Five layers with strides 5,4,2,2,2 and kernels 10,8,4,4,4 downsample by 160:
one frame per 10 ms at 16 kHz. Paddings are chosen so a crop of L samples
(L a multiple of 160) gives exactly L / 160 frames, which keeps frame t aligned
with the 10 ms label of samples [160 t, 160 t + 160).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from mmssl.registry import ENCODERS


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every time step: unlike BatchNorm it does not
    mix the samples of a batch, which would leak information between the
    positives and negatives of a contrastive loss."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


@ENCODERS.register("cpc_conv")
class WaveformConvEncoder(nn.Module):
    """Waveform (B, L) -> frames (B, L // hop, channels)."""

    def __init__(
        self,
        channels: int = 512,
        strides: tuple[int, ...] = (5, 4, 2, 2, 2),
        kernels: tuple[int, ...] = (10, 8, 4, 4, 4),
    ):
        super().__init__()
        if len(strides) != len(kernels):
            raise ValueError("strides and kernels must have the same length")
        layers, c_in = [], 1
        for k, s in zip(kernels, strides):
            if k < s:
                raise ValueError(f"kernel {k} is shorter than its stride {s}")
            # padding ceil((k - s) / 2) makes a layer map n samples to exactly n / s frames
            layers += [nn.Conv1d(c_in, channels, k, s, padding=(k - s + 1) // 2), ChannelNorm(channels), nn.ReLU()]
            c_in = channels
        self.net = nn.Sequential(*layers)
        self.embed_dim = channels
        self.hop = int(torch.tensor(strides).prod())

    def forward_features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, L) or (B, 1, L) -> z (B, T, D) with T = L // hop."""
        if wav.dim() == 2:
            wav = wav.unsqueeze(1)
        return rearrange(self.net(wav), "b d t -> b t d")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(wav))
