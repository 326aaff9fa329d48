"""Audio probes, the protocol of the CPC paper (arXiv:1807.03748, Table 1).

A linear classifier on frozen features for the speaker of an utterance (features
mean-pooled over time) and for the phone of each 10 ms frame, for the trained
encoder beside MFCCs and a randomly initialised encoder of the same architecture.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mmssl.evaluation.linear import linear_probe

FRAME_HOP = 160
PAPER = "CPC paper, LibriSpeech-100: phone 64.6 CPC / 39.7 MFCC / 27.6 random; speaker 97.4 / 17.6 / 1.87"


def mfcc_features() -> Callable[[np.ndarray], torch.Tensor]:
    """13 MFCCs with deltas and delta-deltas (39 dims) per 10 ms frame: the classic baseline."""
    import torchaudio

    mfcc = torchaudio.transforms.MFCC(
        sample_rate=16000, n_mfcc=13, melkwargs={"n_fft": 400, "hop_length": FRAME_HOP, "n_mels": 40}
    )

    def features(wav: np.ndarray) -> torch.Tensor:
        m = mfcc(torch.from_numpy(wav))  # (13, T + 1), frame t centred on sample 160 t
        d1 = torchaudio.functional.compute_deltas(m)
        d2 = torchaudio.functional.compute_deltas(d1)
        return torch.cat([m, d1, d2]).T[: len(wav) // FRAME_HOP]  # (T, 39)

    return features


def encoder_features(encoder: nn.Module, batch_size: int = 16) -> Callable[[list[np.ndarray]], list[torch.Tensor]]:
    """Frame features of many utterances, batched by length.

    Utterances are zero-padded at the end; the context network is causal and the
    convolutions local, so the frames before the padding are unaffected (up to the
    last frame's receptive field) and are cut back to each utterance's length.
    """
    device = next(encoder.parameters()).device
    hop = getattr(encoder, "hop", FRAME_HOP)

    @torch.no_grad()
    def features(wavs: list[np.ndarray]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(wavs)
        order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            longest = max(len(wavs[i]) for i in idx)
            x = torch.zeros(len(idx), longest)
            for row, i in enumerate(idx):
                x[row, : len(wavs[i])] = torch.from_numpy(wavs[i])
            tokens = encoder.forward_features(x.to(device)).float().cpu()  # (b, T, D)
            for row, i in enumerate(idx):
                out[i] = tokens[row, : max(1, len(wavs[i]) // hop)]
        return out

    return features


def mfcc_batch(features: Callable[[np.ndarray], torch.Tensor]) -> Callable[[list[np.ndarray]], list[torch.Tensor]]:
    return lambda wavs: [features(w) for w in wavs]


def collect(source: Any, featurize: Callable, max_items: int, max_samples: int) -> dict[str, torch.Tensor]:
    """Pooled features + utterance labels, and frame features + frame labels where they exist."""
    items = [source[i] for i in range(min(len(source), max_items))]
    feats = featurize([item["audio"][:max_samples] for item in items])  # list of (T, D)
    out = {"pooled": torch.stack([f.mean(0) for f in feats]), "labels": torch.as_tensor([it["label"] for it in items])}
    framed = [(f, it["frames"]) for f, it in zip(feats, items) if it.get("frames") is not None]
    if framed:
        lengths = [min(len(f), len(lab)) for f, lab in framed]
        out["frames"] = torch.cat([f[:t] for (f, _), t in zip(framed, lengths)])
        out["frame_labels"] = torch.cat([torch.as_tensor(lab[:t]) for (_, lab), t in zip(framed, lengths)])
    return out


def audio_probes(
    encoders: dict[str, nn.Module], train: Any, test: Any, max_items: int = 4000, max_seconds: float = 10.0,
    max_train_frames: int = 30000,
) -> dict[str, Any]:
    """Speaker (utterance) and phone (frame) probes for each encoder and for MFCC.

    Returns {"speaker": {name: accuracy}, "phone": {...}, "table": str, ...}.
    """
    featurizers = {name: encoder_features(enc) for name, enc in encoders.items()}
    featurizers["mfcc"] = mfcc_batch(mfcc_features())
    max_samples = int(max_seconds * 16000)
    report: dict[str, Any] = {"train": getattr(train, "name", "train"), "test": getattr(test, "name", "test")}
    has_labels = bool(len(train)) and train[0]["label"] >= 0
    for name, featurize in featurizers.items():
        tr = collect(train, featurize, max_items, max_samples)
        te = collect(test, featurize, max_items, max_samples)
        if has_labels:
            keep = te["labels"] >= 0  # test labels unseen in training cannot be scored
            res = linear_probe(tr["pooled"], tr["labels"], te["pooled"][keep], te["labels"][keep], l2=1e-3)
            report.setdefault("speaker", {})[name] = res["accuracy"]
            report.setdefault("majority", {})["speaker"] = majority(te["labels"][keep])
        if "frames" in tr and "frames" in te:
            # A fixed random subset of training frames keeps the frame probe fast; all test frames are scored.
            pick = torch.randperm(len(tr["frames"]), generator=torch.Generator().manual_seed(0))[:max_train_frames]
            res = linear_probe(tr["frames"][pick], tr["frame_labels"][pick], te["frames"], te["frame_labels"], l2=1e-4)
            report.setdefault("phone", {})[name] = res["accuracy"]
            report.setdefault("majority", {})["phone"] = majority(te["frame_labels"])
    report["table"] = format_table(report, list(featurizers))
    return report


def majority(labels: torch.Tensor) -> float:
    """Accuracy of always answering the most frequent class: the floor a probe must beat."""
    return torch.bincount(labels).max().item() / len(labels)


def format_table(report: dict[str, Any], names: list[str]) -> str:
    probes = [p for p in ("speaker", "phone") if p in report]
    if not probes:
        return "no labels in this dataset: nothing to probe (pass --label-column)"
    lines = [f"linear probes on frozen features, accuracy % (train {report['train']} -> test {report['test']})"]
    lines.append(f"{'probe':<22}" + "".join(f"{n:>10}" for n in names) + f"{'majority':>10}")
    for probe in probes:
        level = "utterance" if probe == "speaker" else "frame"
        row = "".join(f"{100 * report[probe][n]:>10.1f}" for n in names)
        lines.append(f"{probe + ' (' + level + ')':<22}{row}{100 * report['majority'][probe]:>10.1f}")
    lines.append(PAPER)
    return "\n".join(lines)
