"""What the audio tasks share: the config of the waveform data and of the CPC
encoder, the data stream, and the evaluation of the CPC paper (speaker and phone
linear probes beside MFCCs and a randomly initialised encoder of the same shape)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mmssl.config import TrainConfig
from mmssl.data import HeldOut, train_loader
from mmssl.encoders.io import build_encoder
from mmssl.errors import DataError
from mmssl.evaluation.audio import audio_probes
from mmssl.modalities.audio import SAMPLE_RATE, open_audio, random_crop
from mmssl.modalities.audio.data import StreamingAudio
from mmssl.task import Task


@dataclasses.dataclass(frozen=True)
class AudioConfig(TrainConfig):
    audio_column: str = "audio"
    crop_samples: int = 20480  # 1.28 s, 128 frames of 10 ms
    channels: int = 128  # CPC conv encoder width (the paper: 512)
    context: str = "gru"  # gru | causal_transformer
    context_dim: int = 256
    context_layers: int = 1
    probe_max_utterances: int = 4000
    probe_max_seconds: float = 10.0


class AudioTask(Task):
    """Base of the audio tasks; subclasses set ``build_objective`` and, when they need
    more than one crop per utterance, ``make_item``."""

    modality = "audio"
    default_data = "embedded synthetic speech (24 speakers, 22 phones)"
    Config = AudioConfig

    def encoder_spec(self, cfg: AudioConfig) -> dict:
        if cfg.context not in ("gru", "causal_transformer"):
            raise DataError(f"context must be gru or causal_transformer, not '{cfg.context}'")
        ctx = {"dim": cfg.context_dim, "layers": cfg.context_layers}
        return {
            "name": "sequence",
            "kwargs": {"frames": {"name": "cpc_conv", "kwargs": {"channels": cfg.channels}},
                       "context": {"name": cfg.context, "kwargs": ctx}},
        }

    def make_item(self, cfg: AudioConfig) -> Callable[[Any, torch.Generator], dict]:
        """waveform (numpy) + generator -> the batch entry the objective reads."""
        crop = cfg.crop_samples
        return lambda audio, gen: {"input": random_crop(audio, crop, gen)}

    def train_loader(self, cfg: AudioConfig, start_batch: int, world: int, rank: int) -> DataLoader:
        if cfg.crop_samples % 160:
            raise DataError(f"crop_samples must be a multiple of 160 (one 10 ms frame), got {cfg.crop_samples}")
        if cfg.streaming:
            stream = StreamingAudio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column, cfg.crop_samples,
                                    cfg.batch_size, world, rank, cfg.seed, start_batch, make_item=self.make_item(cfg))
            return DataLoader(stream, batch_size=cfg.batch_size)
        source = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column)
        make = self.make_item(cfg)
        return train_loader(source, lambda item, gen: make(item["audio"], gen), cfg.batch_size, world, rank,
                            cfg.seed, start_batch, cfg.num_workers)

    def encoder_meta(self, cfg: AudioConfig) -> dict:
        return {"task": self.name, "modality": self.modality, "sample_rate": SAMPLE_RATE, "frame_hop": 160}

    def evaluate(self, cfg: AudioConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        torch.manual_seed(cfg.seed + 1)
        random = build_encoder(encoder.spec).eval()
        if cfg.dataset != "demo" and cfg.label_column is None:  # unlabelled: the collapse monitor only
            return unlabelled_audio_report(self, cfg, {self.objective: encoder.eval(), "random": random})
        train, test = probe_splits(cfg)
        return audio_probes({self.objective: encoder.eval(), "random": random}, train, test,
                            cfg.probe_max_utterances, cfg.probe_max_seconds)


def probe_splits(cfg: Any) -> tuple[Any, Any]:
    """(train, test) labelled sources: the dataset's test split, else a held-out fifth of train."""
    label = cfg.label_column
    if cfg.dataset != "demo" and label is None:
        raise DataError("the audio probes need labels: pass --label-column (e.g. speaker_id)")
    train = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column, label)
    try:
        test = open_audio(cfg.dataset, cfg.eval_split or "test", cfg.dataset_config, cfg.audio_column, label,
                          vocab=getattr(train, "vocab", None))
    except DataError:
        if cfg.eval_split:
            raise
        return HeldOut(train, keep_test=False), HeldOut(train, keep_test=True)
    return train, test


def unlabelled_audio_report(task: Task, cfg: Any, encoders: dict[str, nn.Module]) -> dict[str, Any]:
    from mmssl.evaluation.audio import encoder_features
    from mmssl.evaluation.collapse import collapse_report
    from mmssl.sources import probe_hint

    source = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column)
    n = min(len(source), cfg.probe_max_utterances)
    wavs = [source[i]["audio"][: int(cfg.probe_max_seconds * SAMPLE_RATE)] for i in range(n)]
    pooled = {name: torch.stack([f.mean(0) for f in encoder_features(enc)(wavs)]) for name, enc in encoders.items()}
    return collapse_report(pooled, "utterances", probe_hint(task, cfg, getattr(source, "ds", None)))
