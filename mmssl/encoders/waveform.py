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


@ENCODERS.register("cpc_conv")
class WaveformConvEncoder(nn.Module):
    """Waveform (B, L) -> frames (B, L // hop, channels)."""

    def __init__(
        self,
        channels: int = 512,
        strides: tuple[int, ...] = (5, 4, 2, 2, 2),
        kernels: tuple[int, ...] = (10, 8, 4, 4, 4),
        normalize_input: bool = True,
    ):
        super().__init__()
        if len(strides) != len(kernels):
            raise ValueError("strides and kernels must have the same length")
        layers, c_in = [], 1
        for k, s in zip(kernels, strides):
            if k < s:
                raise ValueError(f"kernel {k} is shorter than its stride {s}")
            # padding ceil((k - s) / 2) makes a layer map n samples to exactly n / s frames
            # No conv bias: the norm that follows removes it and has its own. GroupNorm(1, C)
            # normalises each example over channels and time: unlike BatchNorm it does not mix
            # the positives and negatives of a batch, and unlike a per-frame channel norm it
            # keeps the loudness contour, without which training sat on a plateau here.
            conv = nn.Conv1d(c_in, channels, k, s, padding=(k - s + 1) // 2, bias=False)
            layers += [conv, nn.GroupNorm(1, channels), nn.ReLU()]
            c_in = channels
        self.net = nn.Sequential(*layers)
        self.embed_dim = channels
        self.hop = int(torch.tensor(strides).prod())
        self.normalize_input = normalize_input

    def forward_features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, L) or (B, 1, L) -> z (B, T, D) with T = L // hop."""
        if wav.dim() == 2:
            wav = wav.unsqueeze(1)
        if self.normalize_input:
            # Zero mean, unit variance per example: recordings differ in level by orders of
            # magnitude, and a quiet input would leave the first layer's output near constant.
            var, mean = torch.var_mean(wav, dim=-1, keepdim=True, unbiased=False)
            wav = (wav - mean) * torch.rsqrt(var + 1e-7)
        return rearrange(self.net(wav), "b d t -> b t d")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(wav))
