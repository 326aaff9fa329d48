"""Tiny encoders for objective tests: the interface of mmssl's encoders (``forward_features`` ->
tokens (B, N, D), ``pool`` -> (B, D), ``embed_dim``), with and without BatchNorm."""
import torch
from torch import nn


class TinyEncoder(nn.Module):
    """Any input (B, ...) -> flatten -> chunks of 16 values -> Linear -> tokens (B, N, D); no BatchNorm."""

    def __init__(self, dim: int = 12, chunk: int = 16):
        super().__init__()
        self.chunk, self.embed_dim = chunk, dim
        self.proj = nn.Linear(chunk, dim)

    def forward_features(self, x):
        return torch.tanh(self.proj(x.flatten(1).unflatten(1, (-1, self.chunk))))  # (B, N, D)

    def pool(self, tokens):
        return tokens.mean(dim=1)


class BNEncoder(nn.Module):
    """Images (B, 3, H, W) -> conv -> BatchNorm -> ReLU -> tokens = positions (B, H * W, D):
    in train mode the batch statistics shape every output."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.embed_dim = dim
        self.net = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())

    def forward_features(self, x):
        return self.net(x).flatten(2).transpose(1, 2)

    def pool(self, tokens):
        return tokens.mean(dim=1)
