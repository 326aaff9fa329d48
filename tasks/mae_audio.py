"""mae_audio: masked autoencoding of log-mel spectrograms (AudioMAE, arXiv:2207.06405).

2-D spectrogram patches, 80% masked, the same MAE objective as mae_image; the
encoder reads waveforms at evaluation, so the speaker and phone probes of the
CPC paper score it beside a random encoder and MFCCs.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from mmssl.encoders.spectrogram import LogMel
from mmssl.errors import DataError
from mmssl.evaluation.audio_report import probe_splits
from mmssl.objectives.mae import MAE, MAESettings
from mmssl.registry import TASKS
from mmssl.tasks.audio_base import AudioConfig, AudioTask


@functools.cache
def _logmel(n_mels: int, device: torch.device) -> LogMel:
    """The log-mel front end on ``device``, its filterbank built once rather than per batch."""
    return LogMel(n_mels).to(device)


@dataclasses.dataclass(frozen=True)
class MAEAudioConfig(AudioConfig):
    max_steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    n_mels: int = 64
    patch_mels: int = 8
    patch_frames: int = 8
    vit_size: str = "tiny"
    vit_dim: int | None = 128
    vit_depth: int | None = 4
    vit_heads: int | None = 4
    objective: MAESettings = MAESettings(
        mask_ratio=0.8,  # AudioMAE's ratio: neighbouring spectrogram patches are more alike than pixels
        decoder_dim=128,  # as wide as the demo encoder (128), not 512: a few CPU minutes per run
        decoder_depth=2,  # half the demo encoder's 4 blocks: MAE's decoder is the lighter half
        decoder_heads=4,  # 32 dims per head, as the demo encoder's
    )


@TASKS.register("mae_audio")
class MAEAudio(AudioTask):
    name = "mae_audio"
    encoder = "spectrogram_vit"
    objective = "mae"
    Config = MAEAudioConfig

    def encoder_spec(self, cfg: MAEAudioConfig) -> dict:
        frames = cfg.crop_samples // 160
        if cfg.n_mels % cfg.patch_mels or frames % cfg.patch_frames:
            raise DataError(f"n_mels ({cfg.n_mels}) and crop frames ({frames}) must be multiples of the patch "
                            f"({cfg.patch_mels} x {cfg.patch_frames})")
        return {"name": "spectrogram_vit", "kwargs": {
            "n_mels": cfg.n_mels, "frames": frames, "patch": [cfg.patch_mels, cfg.patch_frames], "size": cfg.vit_size,
            "dim": cfg.vit_dim, "depth": cfg.vit_depth, "heads": cfg.vit_heads}}

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
