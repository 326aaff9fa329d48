"""The end-of-run report of an audio task, and the labelled splits its probes and monitor read.

Labelled data: the CPC paper's speaker and phone linear probes (``mmssl.evaluation.audio``) of the
trained encoder beside MFCCs and a random encoder of the same architecture, with the learning
curve of the online speaker monitor. Unlabelled data: the collapse figures of the utterances'
mean features (``mmssl.evaluation.collapse``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.data import train_and_test
from mmssl.errors import DataError
from mmssl.evaluation.audio import MFCC, POOLINGS, audio_probes, encoder_features, speaker_monitor
from mmssl.modalities.audio import SAMPLE_RATE, open_audio


def probe_splits(cfg: Any) -> tuple[Any, Any]:
    """(train, test) labelled sources: the dataset's test split, else a held-out fifth of train."""
    label = cfg.label_column
    if cfg.dataset != "demo" and label is None:
        raise DataError("the audio probes need labels: pass --label-column (e.g. speaker_id)")
    return train_and_test(lambda split, vocab: open_audio(cfg.dataset, split, cfg.dataset_config, cfg.audio_column,
                                                          label, vocab=vocab), cfg.split, cfg.eval_split)


def audio_report(task: Any, cfg: Any, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
    """The evaluation's JSON-able report (with a ``table`` string); the curve goes to ``out_dir/plots``."""
    random = task.random_encoder(cfg, encoder)
    if cfg.dataset != "demo" and cfg.label_column is None:  # unlabelled: the collapse monitor only
        return unlabelled_report(task, cfg, {task.objective: encoder.eval(), "random": random})
    train, test = probe_splits(cfg)
    report = audio_probes({task.objective: encoder.eval(), "random": random}, train, test,
                          cfg.probe_max_utterances, cfg.probe_max_seconds, pooling=cfg.utterance_pooling,
                          seed=cfg.seed, random_init_seed=cfg.seed + 1, protocol=cfg.linear_protocol)
    curve = learning_curve(task, cfg, random, Path(out_dir)) if out_dir is not None else None
    if curve is not None:
        report["learning_curve"], report["plots"] = curve, [curve["path"]]
    return report


def learning_curve(task: Any, cfg: Any, random: nn.Module, out_dir: Path) -> dict | None:
    """plots/learning_curve.png: the monitor's speaker accuracy over the run, beside the random
    encoder and MFCCs measured once with the same monitor protocol."""
    from mmssl.evaluation.plots import run_learning_curve

    def baselines() -> dict[str, float]:
        data = task.monitor_data(cfg)
        if data is None:
            return {}
        mfcc = MFCC()
        return {"random encoder": speaker_monitor(encoder_features(random), data, cfg.utterance_pooling),
                "mfcc": speaker_monitor(mfcc.batch, data, cfg.utterance_pooling, MFCC.UTTERANCE_DIMS)}

    return run_learning_curve(cfg, out_dir, "monitor/speaker_acc", baselines,
                              title=f"{task.name}: online speaker probe ({POOLINGS[cfg.utterance_pooling]})",
                              ylabel="speaker accuracy (%)", label=f"{task.name} encoder")


def unlabelled_report(task: Any, cfg: Any, encoders: dict[str, nn.Module]) -> dict[str, Any]:
    """Collapse figures of each encoder's mean features over the first training utterances."""
    from mmssl.evaluation.collapse import collapse_report
    from mmssl.sources import probe_hint

    source = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column)
    n = min(len(source), cfg.probe_max_utterances)
    wavs = [source[i]["audio"][: int(cfg.probe_max_seconds * SAMPLE_RATE)] for i in range(n)]
    pooled = {name: torch.stack([f.mean(0) for f in encoder_features(enc)(wavs)]) for name, enc in encoders.items()}
    return collapse_report(pooled, "utterances", probe_hint(task, cfg, getattr(source, "ds", None)))
