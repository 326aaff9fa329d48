"""Audio probes, the protocol of the CPC paper (arXiv:1807.03748, Table 1), with x-vector statistics pooling.

A linear classifier on frozen features for the speaker of an utterance and for the phone of each
10 ms frame, for the trained encoder beside MFCCs and a randomly initialised encoder of the same
architecture. An utterance's frames are pooled by their mean and standard deviation over time, the
statistics pooling of x-vectors (Snyder et al., ICASSP 2018), by default; ``pooling="mean"`` keeps
the mean alone. Every column, MFCCs included, goes through the same pooling and the same
standardised logistic regression (``mmssl.evaluation.linear``), at fixed L2 penalties
(``protocol="lbfgs_fixed"``, the default: 1e-3 for utterances, 1e-4 for frames) or with each column's
penalty chosen on its training items (``lbfgs``: by 5-fold cross-validation for utterances, on a
held-out fifth for frames, as the image probes choose). The
online speaker monitor always takes the fixed penalty: it runs every ``monitor_every`` steps, where a
choice would cost twelve fits each time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mmssl.config import ConfigError
from mmssl.evaluation.linear import LBFGS, VAL_FRACTION, linear_probe

FRAME_HOP = 160  # 10 ms at 16 kHz
N_MFCC = 40
POOLINGS = {"meanstd": "mean+std pooled", "mean": "mean pooled"}
UTTERANCE_L2, FRAME_L2 = 1e-3, 1e-4  # l2 of the speaker and the phone probe under ``lbfgs_fixed`` and in the monitor
# A held-out fifth of a speaker's few utterances is too few to choose by: utterances cross-validate.
UTTERANCE_FOLDS = 5
AUDIO_PROTOCOLS = {"lbfgs": (f"{LBFGS}, its L2 chosen from 1e-6..1e5 (a decade apart) by {UTTERANCE_FOLDS}-fold "
                             f"cross-validation (utterances) or on {VAL_FRACTION:.0%} held out (frames), then "
                             "refitted on all of train"),
                   "lbfgs_fixed": f"{LBFGS} at L2 {UTTERANCE_L2:g} (utterances) and {FRAME_L2:g} (frames)"}
PAPER = "CPC paper, LibriSpeech-100: phone 64.6 CPC / 39.7 MFCC / 27.6 random; speaker 97.4 / 17.6 / 1.87"


def check_audio_protocol(protocol: str) -> str:
    """``protocol`` if the audio probes run it, else a ConfigError naming the choices."""
    if protocol not in AUDIO_PROTOCOLS:
        raise ConfigError(f"linear_protocol for audio probes must be one of {', '.join(AUDIO_PROTOCOLS)}, "
                          f"not '{protocol}'")
    return protocol


def check_pooling(pooling: str) -> str:
    """``pooling`` if it names an utterance pooling, else a ConfigError naming the choices."""
    if pooling not in POOLINGS:
        raise ConfigError(f"utterance_pooling must be {' or '.join(POOLINGS)}, not '{pooling}'")
    return pooling


def pool_utterance(frames: torch.Tensor, pooling: str = "meanstd") -> torch.Tensor:
    """One utterance's frame features (T, D) -> (2 D,) [mean, std] over time, or (D,) mean.

    The standard deviation is the population one (divide by T), as statistics pooling computes
    it, so an utterance of one frame pools to std 0 rather than NaN.
    """
    if frames.ndim != 2 or len(frames) == 0:
        raise ValueError(f"expected frame features (T, D) with T >= 1, got shape {tuple(frames.shape)}")
    mean = frames.mean(0)
    if check_pooling(pooling) == "mean":
        return mean
    return torch.cat([mean, frames.std(0, correction=0)])


class MFCC:
    """The MFCC baseline: 40 coefficients per 10 ms frame, with their deltas and delta-deltas.

    40 mel bands and 40 cepstra from a 25 ms Hann window every 10 ms at 16 kHz: the
    "high-resolution" MFCCs that Kaldi's neural-network and x-vector recipes feed their models,
    which keep the whole log-mel envelope (the 40-point DCT is invertible) where the classic 13
    cepstra smooth most of the speaker's spectral detail away.

    ``__call__`` returns (T, 120): the 40 static coefficients, then the deltas and delta-deltas
    (regression over +-2 frames). The frame (phone) probe reads all 120: one static frame holds 25
    ms and no context, and deltas are the standard way to give it the neighbouring frames that an
    encoder's receptive field and context network see. The utterance (speaker) probe reads the 40
    static coefficients only (``UTTERANCE_DIMS``): statistics pooling already summarises the whole
    utterance, a delta's mean over an utterance is about zero, and x-vector systems pool static
    features; the extra 160 pooled dimensions would only add variance on a few utterances per speaker.
    """

    UTTERANCE_DIMS = N_MFCC

    def __init__(self, sample_rate: int = 16000):
        import torchaudio

        self.transform = torchaudio.transforms.MFCC(
            sample_rate=sample_rate, n_mfcc=N_MFCC,
            melkwargs={"n_fft": 400, "win_length": 400, "hop_length": FRAME_HOP, "n_mels": N_MFCC},
        )
        self.deltas = torchaudio.functional.compute_deltas

    def __call__(self, wav: np.ndarray) -> torch.Tensor:
        m = self.transform(torch.from_numpy(wav))  # (40, T + 1), frame t centred on sample 160 t
        d1 = self.deltas(m)
        d2 = self.deltas(d1)
        return torch.cat([m, d1, d2]).T[: max(1, len(wav) // FRAME_HOP)]  # (T, 120)

    def batch(self, wavs: list[np.ndarray]) -> list[torch.Tensor]:
        return [self(w) for w in wavs]


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


def featurizers(encoders: dict[str, nn.Module]) -> dict[str, tuple[Callable, int | None]]:
    """name -> (wavs -> list of (T, D) frame features, how many leading dims the utterance probe reads)."""
    out: dict[str, tuple[Callable, int | None]] = {name: (encoder_features(enc), None) for name, enc in encoders.items()}
    mfcc = MFCC()
    out["mfcc"] = (mfcc.batch, MFCC.UTTERANCE_DIMS)
    return out


def collect(source: Any, featurize: Callable, max_items: int, max_samples: int, pooling: str = "meanstd",
            utterance_dims: int | None = None) -> dict[str, torch.Tensor]:
    """Pooled features (U, D') + utterance labels (U,), and frame features + frame labels where they exist."""
    items = [source[i] for i in range(min(len(source), max_items))]
    feats = featurize([item["audio"][:max_samples] for item in items])  # list of (T, D)
    out = {"pooled": torch.stack([pool_utterance(f[:, :utterance_dims], pooling) for f in feats]),
           "labels": torch.as_tensor([it["label"] for it in items])}
    framed = [(f, it["frames"]) for f, it in zip(feats, items) if it.get("frames") is not None]
    if framed:
        lengths = [min(len(f), len(lab)) for f, lab in framed]
        out["frames"] = torch.cat([f[:t] for (f, _), t in zip(framed, lengths)])
        out["frame_labels"] = torch.cat([torch.as_tensor(lab[:t]) for (_, lab), t in zip(framed, lengths)])
    return out


def audio_probes(
    encoders: dict[str, nn.Module], train: Any, test: Any, max_items: int = 4000, max_seconds: float = 10.0,
    max_train_frames: int = 30000, pooling: str = "meanstd", seed: int = 0, random_init_seed: int | None = None,
    protocol: str = "lbfgs_fixed",
) -> dict[str, Any]:
    """Speaker (utterance) and phone (frame) probes for each encoder and for MFCC.

    Args:
        encoders: name -> frozen encoder (``forward_features`` on (B, samples) -> (B, T, D)).
        train, test: labelled sources (items with "audio", "label" and optionally "frames").
        max_items, max_seconds: the first ``max_items`` utterances of each split, each cut to
            ``max_seconds``.
        max_train_frames: the phone probe trains on a random subset of this many frames (``seed``).
        pooling: ``meanstd`` (statistics pooling) or ``mean``, for every column.
        random_init_seed: the seed the caller initialised its random encoder with, for the table.
        protocol: ``lbfgs_fixed`` or ``lbfgs`` (each probe's L2 chosen on its training items: 5-fold
            cross-validation for utterances, a held-out fifth for frames, drawn with ``seed``).
    Returns:
        {"speaker": {name: accuracy}, "phone": {...}, "majority": {...}, "pooling": str,
         "linear_protocol": str, "linear_l2": {probe: {name: L2}}, "sizes": {"train_utterances": n, ...},
         "seed": int, "table": str, ...}.
    """
    check_pooling(pooling)
    check_audio_protocol(protocol)
    chosen = protocol == "lbfgs"
    columns = featurizers(encoders)
    max_samples = int(max_seconds * 16000)
    report: dict[str, Any] = {"train": getattr(train, "name", "train"), "test": getattr(test, "name", "test"),
                              "pooling": pooling, "seed": seed, "random_init_seed": random_init_seed,
                              "linear_protocol": protocol, "linear_l2": {}, "sizes": {}}
    has_labels = bool(len(train)) and train[0]["label"] >= 0
    for name, (featurize, dims) in columns.items():
        tr = collect(train, featurize, max_items, max_samples, pooling, dims)
        te = collect(test, featurize, max_items, max_samples, pooling, dims)
        sizes = report["sizes"]
        if has_labels:
            keep = te["labels"] >= 0  # test labels unseen in training cannot be scored
            res = linear_probe(tr["pooled"], tr["labels"], te["pooled"][keep], te["labels"][keep],
                               l2=None if chosen else UTTERANCE_L2, seed=seed, folds=UTTERANCE_FOLDS)
            report.setdefault("speaker", {})[name] = res["accuracy"]
            report["linear_l2"].setdefault("speaker", {})[name] = res["l2"]
            report.setdefault("majority", {})["speaker"] = majority(te["labels"][keep])
            sizes.update(train_utterances=len(tr["labels"]), test_utterances=int(keep.sum()))
        if "frames" in tr and "frames" in te:
            # A fixed random subset of training frames keeps the frame probe fast; all test frames are scored.
            gen = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(tr["frames"]), generator=gen)[:max_train_frames]
            res = linear_probe(tr["frames"][pick], tr["frame_labels"][pick], te["frames"], te["frame_labels"],
                               l2=None if chosen else FRAME_L2, seed=seed)
            report.setdefault("phone", {})[name] = res["accuracy"]
            report["linear_l2"].setdefault("phone", {})[name] = res["l2"]
            report.setdefault("majority", {})["phone"] = majority(te["frame_labels"])
            sizes.update(train_frames=len(pick), train_frames_total=len(tr["frames"]), test_frames=len(te["frames"]))
    report["table"] = format_table(report, list(columns))
    return report


def majority(labels: torch.Tensor) -> float:
    """Accuracy of always answering the most frequent class: the floor a probe must beat."""
    return torch.bincount(labels).max().item() / len(labels)


def probe_label(probe: str, pooling: str) -> str:
    """Row label of a probe: its name, its level and, for utterances, the pooling."""
    return f"speaker (utterance, {POOLINGS[pooling]})" if probe == "speaker" else "phone (frame)"


def format_table(report: dict[str, Any], names: list[str]) -> str:
    probes = [p for p in ("speaker", "phone") if p in report]
    if not probes:
        return "no labels in this dataset: nothing to probe (pass --label-column)"
    sizes, parts = report["sizes"], []
    if "speaker" in report:
        parts.append(f"{sizes['train_utterances']} -> {sizes['test_utterances']} utterances")
    if "phone" in report:
        parts.append(f"{sizes['train_frames']} (of {sizes['train_frames_total']}) -> {sizes['test_frames']} frames")
    held_out = ", L2's held-out part" if report["linear_protocol"] == "lbfgs" else ""
    seeds = f"seed {report['seed']} (frame subset{held_out})"
    if report.get("random_init_seed") is not None:
        seeds += f", random encoder initialised with seed {report['random_init_seed']}"
    lines = [
        f"linear probes on frozen features, accuracy % ({AUDIO_PROTOCOLS[report['linear_protocol']]})",
        f"train {report['train']} -> test {report['test']}: {'; '.join(parts)}; {seeds}",
    ]
    labels = {p: probe_label(p, report["pooling"]) for p in probes}
    width = max(len(label) for label in labels.values()) + 2
    lines.append(f"{'probe':<{width}}" + "".join(f"{n:>10}" for n in names) + f"{'majority':>10}")
    for probe in probes:
        row = "".join(f"{100 * report[probe][n]:>10.1f}" for n in names)
        lines.append(f"{labels[probe]:<{width}}{row}{100 * report['majority'][probe]:>10.1f}")
    if report["linear_protocol"] == "lbfgs":  # the penalty each column's probe was fitted with
        for probe in probes:
            l2s = report["linear_l2"][probe]
            lines.append(f"{probe + ' L2 chosen':<{width}}" + "".join(f"{l2s[n]:>10g}" for n in names))
    lines.append(f"mfcc: {N_MFCC} coefficients, 25 ms window, 10 ms hop; utterances pool the static coefficients, "
                 "frames add deltas and delta-deltas")
    lines.append(PAPER)
    return "\n".join(lines)


# ---------------------------------------------------------------- online monitor


def speaker_monitor_set(train: Any, test: Any, per_speaker: int = 2, max_speakers: int = 32, max_seconds: float = 1.0,
                        scan: int = 2000) -> dict[str, list] | None:
    """A small labelled set for the online speaker monitor: the first ``per_speaker`` utterances of
    the first ``max_speakers`` speakers to reach that many in ``train``, against the first
    ``per_speaker`` of the same speakers in ``test``; each utterance cut to ``max_seconds``. At
    most ``scan`` items of each split are read, and reading stops once the set is complete.
    Deterministic: nothing is drawn at random.

    Returns {"train_wavs", "train_y", "test_wavs", "test_y"} (speakers in label order), or None
    when fewer than two speakers have enough utterances in both splits.
    """
    cut = int(max_seconds * 16000)

    def first(source: Any, wanted: set[int] | None) -> dict[int, list[np.ndarray]]:
        found: dict[int, list[np.ndarray]] = {}
        complete: set[int] = set()
        for i in range(min(len(source), scan)):
            item = source[i]
            label = int(item["label"])
            if label < 0 or (wanted is not None and label not in wanted) or len(found.get(label, ())) == per_speaker:
                continue
            found.setdefault(label, []).append(item["audio"][:cut])
            if len(found[label]) == per_speaker:
                complete.add(label)
                if len(complete) == (max_speakers if wanted is None else len(wanted)):
                    break
        return {k: found[k] for k in complete}

    tr = first(train, None)
    te = first(test, set(tr))
    speakers = sorted(te)
    if len(speakers) < 2:
        return None
    out: dict[str, list] = {"train_wavs": [], "train_y": [], "test_wavs": [], "test_y": []}
    for split, found in (("train", tr), ("test", te)):
        for s in speakers:
            out[f"{split}_wavs"] += found[s]
            out[f"{split}_y"] += [s] * per_speaker
    return out


def speaker_monitor(featurize: Callable, data: dict[str, list], pooling: str = "meanstd",
                    utterance_dims: int | None = None) -> float:
    """Speaker accuracy of the linear probe on ``speaker_monitor_set``'s data, with ``featurize``
    (wavs -> list of (T, D)) and the evaluation's pooling and probe; nothing random is drawn."""
    def pooled(wavs: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.stack([pool_utterance(f[:, :utterance_dims], pooling) for f in featurize(list(wavs))])

    train_y, test_y = torch.as_tensor(data["train_y"]), torch.as_tensor(data["test_y"])
    res = linear_probe(pooled(data["train_wavs"]), train_y, pooled(data["test_wavs"]), test_y, l2=UTTERANCE_L2)
    return res["accuracy"]
