"""mae_audio: masked autoencoding of log-mel spectrograms (AudioMAE, arXiv:2207.06405).

2-D spectrogram patches, 80% masked, the same MAE objective as mae_image; the
encoder reads waveforms at evaluation, so the speaker and phone probes of the
CPC paper score it beside a random encoder and MFCCs.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import ClassVar

import torch

from mmssl.config import ConfigError
from mmssl.encoders.spectrogram import LogMel
from mmssl.errors import DataError
from mmssl.evaluation.audio_report import probe_splits
from mmssl.objectives.mae import MAE, MAESettings
from mmssl.registry import TASKS
from mmssl.tasks.audio_base import AudioConfig, AudioTask
from mmssl.tasks.sections import DEMO_VIT, VIT_KEYS, ViTEncoder


@functools.cache
def _logmel(n_mels: int, device: torch.device) -> LogMel:
    """The log-mel front end on ``device``, its filterbank built once rather than per batch."""
    return LogMel(n_mels).to(device)


@dataclasses.dataclass(frozen=True)
class MAEAudioConfig(AudioConfig):
    max_steps: int = 600
    batch_size: int = 32
    weight_decay: float = 0.05
    n_mels: int = 64
    # 8 mels x 8 frames (80 ms) patches: 64 mels x 128 frames give 128 tokens
    encoder: ViTEncoder = ViTEncoder(vit=dataclasses.replace(DEMO_VIT, patch=(8, 8)))
    objective: MAESettings = MAESettings(
        mask_ratio=0.8,  # AudioMAE's ratio: neighbouring spectrogram patches are more alike than pixels
        decoder_dim=128,  # as wide as the demo encoder (128), not 512: a few CPU minutes per run
        decoder_depth=2,  # half the demo encoder's 4 blocks: MAE's decoder is the lighter half
        decoder_heads=4,  # 32 dims per head, as the demo encoder's
    )

    renamed: ClassVar[dict[str, str]] = {**VIT_KEYS, "patch_mels": "encoder.vit.patch (mels,frames)",
                                         "patch_frames": "encoder.vit.patch (mels,frames)"}


@TASKS.register("mae_audio")
class MAEAudio(AudioTask):
    encoder = "spectrogram_vit"
    objective = "mae"
    Config = MAEAudioConfig

    def encoder_spec(self, cfg: MAEAudioConfig) -> dict:
        vit = cfg.encoder.chosen(self.name)
        if (vit.cls_token, vit.pos_embed, vit.pool) != (False, "sincos", "mean"):
            raise ConfigError("the spectrogram ViT has fixed sin-cos positions and mean pooling: drop "
                              "encoder.vit.cls_token, encoder.vit.pos_embed and encoder.vit.pool")
        frames, patch = cfg.crop_samples // 160, vit.patch_for(2)
        if cfg.n_mels % patch[0] or frames % patch[1]:
            raise DataError(f"n_mels ({cfg.n_mels}) and crop frames ({frames}) must be multiples of the patch "
                            f"({patch[0]} x {patch[1]})")
        return {"name": "spectrogram_vit", "kwargs": {"n_mels": cfg.n_mels, "frames": frames, "patch": patch,
                                                      **vit.sizes()}}

    def on_device(self, cfg: MAEAudioConfig, batch: dict) -> dict:
        """Waveform crops {"input": (B, L)} -> per-example standardised log-mel {"input": (B, 1, F, T)},
        computed on the whole batch where it lives (the workers only cut the crops)."""
        return {**batch, "input": _logmel(cfg.n_mels, batch["input"].device)(batch["input"])}

    def after_training(self, cfg: MAEAudioConfig, objective: MAE, out_dir: Path) -> None:
        """DIR/plots/reconstruction.png: log-mel spectrograms, masked and reconstructed."""
        from mmssl.evaluation.plots import plot_reconstructions

        try:
            _, test = probe_splits(cfg)
        except DataError:
            return
        make = self.make_item(cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        device = next(objective.parameters()).device
        crops = torch.stack([make(test[i], gen)["input"] for i in range(min(6, len(test)))])
        with torch.no_grad():
            x = self.on_device(cfg, {"input": crops.to(device)})["input"]
        plot_reconstructions(objective, x, cfg.seed, out_dir / "plots" / "reconstruction.png",
                             title=f"mae_audio, mask ratio {cfg.objective.mask_ratio}")
