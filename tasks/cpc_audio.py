"""cpc_audio: Contrastive Predictive Coding on raw waveforms (arXiv:1807.03748).

Defaults are sized for the embedded demo corpus on a CPU (a few minutes); the
paper-sized recipe for LibriSpeech is configs/cpc_librispeech.yaml.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmssl.config import TrainConfig
from mmssl.data import train_loader
from mmssl.encoders.io import build_encoder
from mmssl.errors import DataError
from mmssl.evaluation.audio import audio_probes
from mmssl.modalities.audio import SAMPLE_RATE, open_audio, random_crop
from mmssl.modalities.audio.data import StreamingAudio
from mmssl.objectives.cpc import CPC
from mmssl.registry import TASKS
from mmssl.task import Task


@dataclasses.dataclass(frozen=True)
class CPCAudioConfig(TrainConfig):
    max_steps: int = 250  # about 2.5 minutes on 2 CPU cores
    audio_column: str = "audio"
    crop_samples: int = 20480  # 1.28 s, 128 frames
    channels: int = 128  # conv encoder width (the paper: 512)
    context: str = "gru"  # gru | causal_transformer
    context_dim: int = 256
    context_layers: int = 1
    prediction_steps: int = 12
    num_negatives: int = 128
    negatives_from: str = "batch"  # batch | sequence
    temperature: float | None = 0.1  # cosine similarity / temperature; none: the paper's dot product
    probe_max_utterances: int = 4000
    probe_max_seconds: float = 10.0


@TASKS.register("cpc_audio")
class CPCAudio(Task):
    name = "cpc_audio"
    modality = "audio"
    encoder = "cpc_conv + gru"
    objective = "cpc"
    default_data = "embedded synthetic speech (24 speakers, 22 phones)"
    Config = CPCAudioConfig

    def encoder_spec(self, cfg: CPCAudioConfig) -> dict:
        if cfg.context not in ("gru", "causal_transformer"):
            raise DataError(f"context must be gru or causal_transformer, not '{cfg.context}'")
        ctx = {"dim": cfg.context_dim, "layers": cfg.context_layers}
        return {
            "name": "sequence",
            "kwargs": {"frames": {"name": "cpc_conv", "kwargs": {"channels": cfg.channels}},
                       "context": {"name": cfg.context, "kwargs": ctx}},
        }

    def build_objective(self, cfg: CPCAudioConfig) -> CPC:
        if cfg.crop_samples % 160:
            raise DataError(f"crop_samples must be a multiple of 160 (one 10 ms frame), got {cfg.crop_samples}")
        return CPC(build_encoder(self.encoder_spec(cfg)), cfg.prediction_steps, cfg.num_negatives, cfg.negatives_from,
                   cfg.temperature)

    def train_loader(self, cfg: CPCAudioConfig, start_batch: int, world: int, rank: int) -> DataLoader:
        if cfg.streaming:
            stream = StreamingAudio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column, cfg.crop_samples,
                                    cfg.batch_size, world, rank, cfg.seed, start_batch)
            return DataLoader(stream, batch_size=cfg.batch_size)
        source = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column)
        crop = cfg.crop_samples

        def transform(item: dict, gen: torch.Generator) -> dict:
            return {"input": random_crop(item["audio"], crop, gen)}

        return train_loader(source, transform, cfg.batch_size, world, rank, cfg.seed, start_batch, cfg.num_workers)

    def encoder_meta(self, cfg: CPCAudioConfig) -> dict:
        return {"task": self.name, "modality": self.modality, "sample_rate": SAMPLE_RATE, "frame_hop": 160}

    def evaluate(self, cfg: CPCAudioConfig, encoder: torch.nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        train, test = probe_splits(cfg)
        torch.manual_seed(cfg.seed + 1)
        random = build_encoder(encoder.spec).eval()
        return audio_probes({"cpc": encoder.eval(), "random": random}, train, test,
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


class HeldOut:
    """A deterministic 80/20 split of one source, for datasets without a test split."""

    def __init__(self, source: Any, keep_test: bool):
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(0)).tolist()
        cut = len(order) * 4 // 5
        self.rows = order[cut:] if keep_test else order[:cut]
        self.source = source
        self.name = f"{getattr(source, 'name', 'data')} ({'held-out 20%' if keep_test else '80%'})"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.rows[i]]
