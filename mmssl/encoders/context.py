"""Autoregressive context networks: z_1..z_t -> c_t, never looking ahead.

Both map (B, T, D_in) -> (B, T, D) and expose ``embed_dim``. ``sequence`` wraps
a frame encoder and a context network into one encoder whose tokens are c_t; with
the strided waveform encoder (``cpc_conv``) it is CPC's encoder (arXiv:1807.03748),
whose settings a task config holds in ``encoder.cpc`` (``CPCEncoderSettings``).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from mmssl.config import ConfigError
from mmssl.encoders.transformer import Block
from mmssl.registry import ENCODERS

CONTEXTS = ("gru", "causal_transformer")


@dataclasses.dataclass(frozen=True)
class CPCEncoderSettings:
    """CPC's encoder: the strided waveform conv net (``cpc_conv``) and an autoregressive context."""

    channels: int = 512  # the waveform encoder's width, the paper's
    context: str = "gru"  # gru (the paper's) | causal_transformer
    context_dim: int = 256
    context_layers: int = 1

    def spec(self) -> dict:
        if self.context not in CONTEXTS:
            raise ConfigError(f"encoder.cpc.context must be {' or '.join(CONTEXTS)}, not '{self.context}'")
        return {"name": "sequence", "kwargs": {
            "frames": {"name": "cpc_conv", "kwargs": {"channels": self.channels}},
            "context": {"name": self.context, "kwargs": {"dim": self.context_dim, "layers": self.context_layers}}}}


@ENCODERS.register("gru")
class GRUContext(nn.Module):
    def __init__(self, in_dim: int, dim: int = 256, layers: int = 1):
        super().__init__()
        self.rnn = nn.GRU(in_dim, dim, num_layers=layers, batch_first=True)
        self.embed_dim = dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, T, D_in) -> (B, T, D)
        c, _ = self.rnn(z)
        return c


@ENCODERS.register("causal_transformer")
class CausalTransformerContext(nn.Module):
    """Pre-norm transformer with causal attention and sinusoidal positions."""

    def __init__(self, in_dim: int, dim: int = 256, layers: int = 2, heads: int = 4):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        # PyTorch's default LayerNorm epsilon and initialisation: what saved contexts were trained with
        self.blocks = nn.ModuleList(Block(dim, heads, causal=True, norm_eps=1e-5, mae_init=False)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.embed_dim = dim

    @staticmethod
    def positions(t: int, dim: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
        pe = torch.zeros(t, dim, device=device)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        return pe

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, T, D_in) -> (B, T, D)
        x = self.inp(z)
        x = x + self.positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


@ENCODERS.register("sequence")
class SequenceEncoder(nn.Module):
    """A frame encoder followed by a context network; its tokens are c_t.

    ``forward_frames`` gives z_t and ``forward_context`` maps z to c, which is
    what CPC needs; everything else uses the plain encoder interface.
    """

    def __init__(self, frames: dict, context: dict):
        super().__init__()
        self.frames = ENCODERS.build(frames["name"], **frames.get("kwargs", {}))
        ctx_kwargs = {"in_dim": self.frames.embed_dim, **context.get("kwargs", {})}
        self.context = ENCODERS.build(context["name"], **ctx_kwargs)
        self.embed_dim = self.context.embed_dim
        self.hop = getattr(self.frames, "hop", 1)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        return self.frames.forward_features(x)

    def forward_context(self, z: torch.Tensor) -> torch.Tensor:
        return self.context(z)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_context(self.forward_frames(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
