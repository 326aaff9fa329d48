"""What the audio tasks share: the config of the waveform data and of the CPC
encoder, the data stream, an online speaker monitor, and the evaluation of the CPC
paper (speaker and phone linear probes beside MFCCs and a randomly initialised
encoder of the same shape, with a learning curve of the monitor)."""
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
from mmssl.evaluation.audio import (
    MFCC,
    POOLINGS,
    audio_probes,
    check_pooling,
    encoder_features,
    speaker_monitor,
    speaker_monitor_set,
)
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
    utterance_pooling: str = "meanstd"  # meanstd (x-vector statistics pooling) | mean (the CPC paper's)
    # Online monitor: the speaker probe on a few short utterances per speaker, cheap enough to run often.
    monitor_every: int = 25
    monitor_utterances: int = 2  # per speaker, from each of the train and the evaluation split
    monitor_speakers: int = 32
    monitor_seconds: float = 1.0


class AudioTask(Task):
    """Base of the audio tasks; subclasses set ``build_objective`` and, when they need
    more than one crop per utterance or random views, ``make_item`` (in the workers: the crops
    and each crop's random parameters) and ``on_device`` (the views of the whole batch)."""

    modality = "audio"
    default_data = "embedded synthetic speech (24 speakers, 22 phones)"
    Config = AudioConfig

    def encoder_spec(self, cfg: AudioConfig) -> dict:
        check_pooling(cfg.utterance_pooling)  # a bad pooling fails before training, not at its end
        if cfg.context not in ("gru", "causal_transformer"):
            raise DataError(f"context must be gru or causal_transformer, not '{cfg.context}'")
        ctx = {"dim": cfg.context_dim, "layers": cfg.context_layers}
        return {
            "name": "sequence",
            "kwargs": {"frames": {"name": "cpc_conv", "kwargs": {"channels": cfg.channels}},
                       "context": {"name": cfg.context, "kwargs": ctx}},
        }

    def make_item(self, cfg: AudioConfig) -> Callable[[Any, torch.Generator], dict]:
        """waveform (numpy) + generator -> the batch entry: fixed-length crop(s), cut here so the
        batch stacks (the offset drawn from the item's generator), and any per-crop parameters."""
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

    def random_encoder(self, cfg: AudioConfig, encoder: nn.Module) -> nn.Module:
        """The baseline: ``encoder``'s architecture, initialised from seed ``cfg.seed + 1``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            return build_encoder(encoder.spec).eval()

    def evaluate(self, cfg: AudioConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        random = self.random_encoder(cfg, encoder)
        if cfg.dataset != "demo" and cfg.label_column is None:  # unlabelled: the collapse monitor only
            return unlabelled_audio_report(self, cfg, {self.objective: encoder.eval(), "random": random})
        train, test = probe_splits(cfg)
        report = audio_probes({self.objective: encoder.eval(), "random": random}, train, test,
                              cfg.probe_max_utterances, cfg.probe_max_seconds, pooling=cfg.utterance_pooling,
                              seed=cfg.seed, random_init_seed=cfg.seed + 1)
        curve = self.learning_curve(cfg, random, Path(out_dir)) if out_dir is not None else None
        if curve is not None:
            report["learning_curve"], report["plots"] = curve, [curve["path"]]
        return report

    def learning_curve(self, cfg: AudioConfig, random: nn.Module, out_dir: Path) -> dict | None:
        """plots/learning_curve.png: the monitor's speaker accuracy over the run, beside the random
        encoder and MFCCs measured once with the same monitor protocol."""
        from mmssl.evaluation.plots import run_learning_curve

        def baselines() -> dict[str, float]:
            data = self.monitor_data(cfg)
            if data is None:
                return {}
            mfcc = MFCC()
            return {"random encoder": speaker_monitor(encoder_features(random), data, cfg.utterance_pooling),
                    "mfcc": speaker_monitor(mfcc.batch, data, cfg.utterance_pooling, MFCC.UTTERANCE_DIMS)}

        return run_learning_curve(cfg, out_dir, "monitor/speaker_acc", baselines,
                                  title=f"{self.name}: online speaker probe ({POOLINGS[cfg.utterance_pooling]})",
                                  ylabel="speaker accuracy (%)", label=f"{self.name} encoder")


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
