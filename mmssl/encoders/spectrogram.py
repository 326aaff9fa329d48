"""A ViT on log-mel spectrograms (AudioMAE, arXiv:2207.06405), fed waveforms or spectrograms.

Given a spectrogram (B, 1, F, T) it is the plain ViT: one token per 2-D patch
(what MAE masks and reconstructs). Given a waveform (B, L) it computes the
log-mel spectrogram itself, encodes it in windows of ``frames`` frames, averages
each time step's patches over frequency and repeats every token over the frames
its patch spans, so the audio probes read one feature per 10 ms frame like
every other audio encoder.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from mmssl.encoders.vit import ViT
from mmssl.registry import ENCODERS


class LogMel(nn.Module):
    """Waveform (B, L) at 16 kHz -> per-example standardised log-mel (B, 1, n_mels, L // hop)."""

    def __init__(self, n_mels: int = 64, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160):
        super().__init__()
        import torchaudio

        self.hop = hop
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop,
                                                        n_mels=n_mels)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // self.hop
        spec = torch.log(self.mel(wav.float()) + 1e-6)[..., :frames]  # (B, F, T); frame t starts at sample hop*t
        var, mean = torch.var_mean(spec, dim=(-2, -1), keepdim=True)
        return ((spec - mean) * torch.rsqrt(var + 1e-5)).unsqueeze(-3)


@ENCODERS.register("spectrogram_vit")
class SpectrogramViT(nn.Module):
    """Spectrogram (B, 1, n_mels, frames) -> patch tokens, or waveform (B, L) -> frame tokens (B, L // 160, D).

    ``pos_layout`` orders the sin-cos table's channels as ``ViT`` does: "mae" gives the time axis
    (the grid's last) the first half, as AudioMAE's table; "grid" is the order of encoders saved
    before the field existed.
    """

    legacy_kwargs = ViT.legacy_kwargs

    def __init__(self, n_mels: int = 64, frames: int = 128, patch: tuple[int, int] | list[int] = (8, 8),
                 size: str = "tiny", dim: int | None = None, depth: int | None = None, heads: int | None = None,
                 pos_layout: str = "mae"):
        super().__init__()
        self.pos_layout = pos_layout
        self.frames, self.patch = frames, tuple(patch)
        self.logmel = LogMel(n_mels)  # no parameters; its window and filterbank are saved buffers
        self.vit = ViT(size=size, input_size=[n_mels, frames], patch=list(patch), channels=1, dim=dim, depth=depth,
                       heads=heads, pos_layout=pos_layout)
        self.embed_dim = self.vit.embed_dim
        self.hop = 160  # waveform input: one token per 10 ms frame

    # the hooks MAE uses, on spectrogram input
    @property
    def patchify(self) -> nn.Module:
        return self.vit.patchify

    @property
    def grid(self) -> tuple[int, ...]:
        return self.vit.grid

    @property
    def num_patches(self) -> int:
        return self.vit.num_patches

    def embed(self, spec: torch.Tensor, patches: torch.Tensor | None = None,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.vit.embed(spec, patches, keep)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_tokens(tokens)

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        return self.logmel(wav)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """spectrogram (B, 1, F, T) -> patch tokens (B, N, D); waveform (B, L) -> frame tokens (B, L // 160, D)."""
        if x.dim() == 4:
            return self.vit.forward_features(x)
        spec = self.spectrogram(x)  # (B, 1, F, T)
        B, T = spec.shape[0], spec.shape[-1]
        windows = math.ceil(T / self.frames)
        spec = nn.functional.pad(spec, (0, windows * self.frames - T))
        spec = rearrange(spec, "b c f (w t) -> (b w) c f t", t=self.frames)
        tokens = self.vit.forward_features(spec)  # (B * W, Fp * Tp, D)
        fp = self.vit.grid[0]
        tokens = rearrange(tokens, "(b w) (fp tp) d -> b (w tp) fp d", b=B, fp=fp).mean(2)  # (B, W * Tp, D)
        return tokens.repeat_interleave(self.patch[1], dim=1)[:, :T]  # (B, T, D): one per 10 ms frame

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
