"""Encoders: every one exposes ``forward_features(x) -> (B, N, D)``, ``embed_dim`` and ``pool``."""
# importing each module registers its encoders
from mmssl.encoders import context, convnet, dense, patch_grid, patchify, resnet, sobel, split_brain, vit, waveform  # noqa: F401
from mmssl.encoders.io import load_encoder, save_encoder  # noqa: F401
