"""The audio tasks' base: the config of the waveform data and of the CPC encoder, the encoder
(``encoder_spec``), the data stream (map-style or streamed, crops cut by ``make_item`` in the
workers), the online speaker monitor's data, and which evaluation (mmssl.evaluation.audio_report:
the CPC paper's speaker and phone probes beside MFCCs and a random encoder)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from mmssl.config import TrainConfig
from mmssl.data import train_loader
from mmssl.encoders.context import CPCEncoderSettings
from mmssl.errors import DataError
from mmssl.evaluation.audio import (
    check_audio_protocol,
    check_pooling,
    encoder_features,
    speaker_monitor,
    speaker_monitor_set,
)
from mmssl.evaluation.audio_report import audio_report, probe_splits
from mmssl.modalities.audio import SAMPLE_RATE, open_audio, random_crop
from mmssl.modalities.audio.data import StreamingAudio
from mmssl.task import Task
from mmssl.tasks.sections import AudioEncoders


@dataclasses.dataclass(frozen=True)
class AudioConfig(TrainConfig):
    audio_column: str = "audio"
    crop_samples: int = 20480  # 1.28 s, 128 frames of 10 ms
    encoder: AudioEncoders = AudioEncoders(cpc=CPCEncoderSettings(channels=128))  # a quarter of the paper's width, for CPUs
    probe_max_utterances: int = 4000
    probe_max_seconds: float = 10.0
    utterance_pooling: str = "meanstd"  # meanstd (x-vector statistics pooling) | mean (the CPC paper's)
    # lbfgs_fixed: L2 1e-3 (utterances) / 1e-4 (frames) | lbfgs: each probe's L2 chosen on its training items
    # (5-fold cross-validation for utterances, a held-out fifth for frames). Fixed by default, the protocol of
    # every audio table (docs/results/audio.md, "The linear probes' L2 chosen on held-out utterances").
    linear_protocol: str = "lbfgs_fixed"
    # Online monitor: the speaker probe on a few short utterances per speaker, cheap enough to run often.
    monitor_every: int = 25
    monitor_utterances: int = 2  # per speaker, from each of the train and the evaluation split
    monitor_speakers: int = 32
    monitor_seconds: float = 1.0

    renamed: ClassVar[dict[str, str]] = {"channels": "encoder.cpc.channels", "context": "encoder.cpc.context",
                                         "context_dim": "encoder.cpc.context_dim",
                                         "context_layers": "encoder.cpc.context_layers"}


class AudioTask(Task):
    """Base of the audio tasks; subclasses set ``build_objective`` and, when they need
    more than one crop per utterance or random views, ``make_item`` (in the workers: the crops
    and each crop's random parameters) and ``on_device`` (the views of the whole batch)."""

    modality = "audio"
    default_data = "embedded synthetic speech (24 speakers, 22 phones)"
    Config = AudioConfig

    def encoder_spec(self, cfg: AudioConfig) -> dict:
        check_pooling(cfg.utterance_pooling)  # a bad pooling fails before training, not at its end
        check_audio_protocol(cfg.linear_protocol)
        return cfg.encoder.chosen(self.name).spec()

    def make_item(self, cfg: AudioConfig) -> Callable[[dict, torch.Generator], dict]:
        """{"audio": waveform (numpy), ...} + generator -> the batch entry: fixed-length crop(s), cut
        here so the batch stacks (the offset drawn from the item's generator), and any per-crop
        parameters."""
        crop = cfg.crop_samples
        return lambda item, gen: {"input": random_crop(item["audio"], crop, gen)}

    def train_loader(self, cfg: AudioConfig, start_batch: int, world: int, rank: int,
                     batch_fn: Callable[[dict], dict] | None = None) -> DataLoader:
        if cfg.crop_samples % 160:
            raise DataError(f"crop_samples must be a multiple of 160 (one 10 ms frame), got {cfg.crop_samples}")
        make = self.make_item(cfg)
        if cfg.streaming:  # the stream hands over bare waveforms
            stream = StreamingAudio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column, cfg.crop_samples,
                                    cfg.batch_size, world, rank, cfg.seed, start_batch,
                                    make_item=lambda wav, gen: make({"audio": wav}, gen))
            return DataLoader(stream, batch_size=cfg.batch_size)
        source = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column)
        return train_loader(source, make, cfg.batch_size, world, rank, cfg.seed, start_batch, cfg.num_workers,
                            batch_fn=batch_fn)

    def encoder_meta(self, cfg: AudioConfig) -> dict:
        return {"task": self.name, "modality": self.modality, "sample_rate": SAMPLE_RATE, "frame_hop": 160}

    # monitor and evaluation ----------------------------------------------------------------------
    def monitor_data(self, cfg: AudioConfig) -> dict | None:
        """The online monitor's utterances (see ``speaker_monitor_set``), read once; None without labels
        or when streaming."""
        if not hasattr(self, "_monitor_data"):
            # A streamed dataset is not opened map-style in the middle of training.
            labelled = (cfg.dataset == "demo" or cfg.label_column is not None) and not cfg.streaming
            self._monitor_data = speaker_monitor_set(*probe_splits(cfg), cfg.monitor_utterances, cfg.monitor_speakers,
                                                     cfg.monitor_seconds) if labelled else None
        return self._monitor_data

    def monitor(self, cfg: AudioConfig, encoder: nn.Module) -> dict[str, float]:
        data = self.monitor_data(cfg)
        if data is None:
            return {}
        return {"speaker_acc": speaker_monitor(encoder_features(encoder), data, cfg.utterance_pooling)}

    def evaluate(self, cfg: AudioConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        return audio_report(self, cfg, encoder, out_dir)
