"""What every convolutional encoder shares: tokens and pooling read off its ``feature_map``."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


class FeatureMapEncoder(nn.Module):
    """Base of encoders whose ``feature_map`` gives (B, D, h, w): the tokens are the map's cells,
    row-major, and the pooled embedding is their mean (global average pooling)."""

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, h * w, D), row-major over the feature map."""
        return rearrange(self.feature_map(x), "b d h w -> b (h w) d")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the mean token."""
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
