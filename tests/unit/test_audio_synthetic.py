"""Tests for the synthetic speech-like demo corpus (modalities/audio/synthetic.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

try:
    from mmssl.modalities.audio import synthetic as syn
except ImportError:  # repo checkout without an installed package: load the file directly
    _path = Path(__file__).resolve().parents[2] / "modalities" / "audio" / "synthetic.py"
    _spec = importlib.util.spec_from_file_location("mmssl_audio_synthetic", _path)
    syn = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(syn)

SMALL = {"num_speakers": 3, "train_per_speaker": 2, "test_per_speaker": 1, "seconds": (1.0, 1.5)}


def _assert_corpus_equal(a: dict, b: dict) -> None:
    for split in ("train", "test"):
        np.testing.assert_array_equal(a[split]["speaker"], b[split]["speaker"])
        assert len(a[split]["audio"]) == len(b[split]["audio"])
        for key in ("audio", "phones"):
            for x, y in zip(a[split][key], b[split][key]):
                np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def probe_corpus() -> dict:
    """20 speakers x 6 utterances, shared by the inventory and learnability tests."""
    return syn.generate_corpus(num_speakers=20, train_per_speaker=5, test_per_speaker=1, seconds=(1.5, 2.5))


def test_constants():
    assert syn.SAMPLE_RATE == 16000 and syn.FRAME_HOP == 160
    assert syn.PHONES[0] == "sil" and len(syn.PHONES) >= 15 and len(set(syn.PHONES)) == len(syn.PHONES)


def test_same_seed_same_corpus_other_seed_differs():
    a, b = syn.generate_corpus(**SMALL, seed=3), syn.generate_corpus(**SMALL, seed=3)
    _assert_corpus_equal(a, b)
    c = syn.generate_corpus(**SMALL, seed=4)
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a["train"]["audio"], c["train"]["audio"]))


def test_utterance_independent_of_corpus_size():
    small = syn.generate_corpus(num_speakers=2, train_per_speaker=1, test_per_speaker=1, seconds=(1.0, 1.5))
    big = syn.generate_corpus(num_speakers=3, train_per_speaker=1, test_per_speaker=1, seconds=(1.0, 1.5))
    np.testing.assert_array_equal(small["train"]["audio"][1], big["train"]["audio"][1])
    np.testing.assert_array_equal(small["test"]["phones"][0], big["test"]["phones"][0])


def test_shapes_dtypes_and_range():
    corpus = syn.generate_corpus(**SMALL)
    for split, per in (("train", 2), ("test", 1)):
        d = corpus[split]
        assert d["speaker"].dtype == np.int64 and d["speaker"].shape == (3 * per,)
        assert len(d["audio"]) == len(d["phones"]) == 3 * per
        for x, p in zip(d["audio"], d["phones"]):
            assert x.dtype == np.float32 and x.ndim == 1
            assert 1.0 * syn.SAMPLE_RATE <= len(x) <= 1.5 * syn.SAMPLE_RATE
            assert np.all(np.isfinite(x)) and 0.1 < np.max(np.abs(x)) <= 1.0
            assert p.dtype == np.int64 and p.shape == (len(x) // syn.FRAME_HOP,)
            assert p.min() >= 0 and p.max() < len(syn.PHONES)
            assert p[0] == 0 and p[-1] == 0  # leading and trailing silence


def test_every_speaker_in_both_splits():
    corpus = syn.generate_corpus(num_speakers=5, train_per_speaker=2, test_per_speaker=1, seconds=(1.0, 1.2))
    for split in ("train", "test"):
        assert set(corpus[split]["speaker"].tolist()) == set(range(5))


def test_phone_inventory_and_silence_energy(probe_corpus):
    labels = np.concatenate(probe_corpus["train"]["phones"])
    assert len(np.unique(labels)) >= 15
    # Silence frames must be much quieter than vowel frames (labels line up with the audio).
    x, p = probe_corpus["train"]["audio"][0], probe_corpus["train"]["phones"][0]
    energy = (x[: len(p) * syn.FRAME_HOP].reshape(len(p), -1) ** 2).mean(1)
    vowel = np.isin(p, [syn.PHONES.index(v) for v in ("iy", "ih", "eh", "ae", "aa", "ao", "uw", "er")])
    assert np.median(energy[vowel]) > 100 * np.median(energy[p == 0])


def test_load_demo_corpus_caches(tmp_path, monkeypatch):
    first = syn.load_demo_corpus(tmp_path, **SMALL)
    files = sorted(f.name for f in tmp_path.iterdir())
    assert len(files) == 2 and all(f.endswith(".npz") and f"v{syn.CACHE_VERSION}" in f for f in files)
    _assert_corpus_equal(first, syn.generate_corpus(**SMALL))

    def boom(**kwargs):
        raise AssertionError("cache miss: generate_corpus was called")

    monkeypatch.setattr(syn, "generate_corpus", boom)
    _assert_corpus_equal(first, syn.load_demo_corpus(tmp_path, **SMALL))  # read from the files
    with pytest.raises(AssertionError, match="cache miss"):  # other arguments: another file name
        syn.load_demo_corpus(tmp_path, **{**SMALL, "seed": 1})
    assert sorted(f.name for f in tmp_path.iterdir()) == files  # nothing half-written left behind


def _log_bands(x: np.ndarray, frames: int, bands: int = 40) -> np.ndarray:
    """Per-frame log energies in log-spaced bands: 25 ms windows centred on each 10 ms frame."""
    win = np.lib.stride_tricks.sliding_window_view(np.pad(x, 200), 400)[80::syn.FRAME_HOP][:frames]
    power = np.abs(np.fft.rfft(win * np.hanning(400), 512)) ** 2
    edges = np.unique(np.geomspace(2, 257, bands + 1).astype(int))
    return np.log(np.add.reduceat(power, edges[:-1], axis=1) + 1e-8)


def _softmax_probe(x, y, x_test, classes: int, steps: int = 300) -> np.ndarray:
    """Multinomial logistic regression on standardised features, full-batch gradient descent
    with momentum (numpy only, so the test needs nothing beyond the library's dependencies)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    w, v, onehot = np.zeros((x.shape[1] + 1, classes)), 0.0, np.eye(classes)[y]
    xb = np.hstack([x, np.ones((len(x), 1))])
    for _ in range(steps):
        logits = xb @ w
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        v = 0.9 * v + xb.T @ (prob - onehot) / len(x) + 1e-4 * w
        w = w - 0.5 * v
    return np.argmax(np.hstack([x_test, np.ones((len(x_test), 1))]) @ w, 1)


def test_phones_are_learnable_from_spectra(probe_corpus):
    feats = {}
    for split in ("train", "test"):
        d = probe_corpus[split]
        feats[split] = (np.concatenate([_log_bands(x, len(p)) for x, p in zip(d["audio"], d["phones"])]),
                        np.concatenate(d["phones"]))
    (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
    pred = _softmax_probe(xtr, ytr, xte, len(syn.PHONES))
    accuracy, majority = np.mean(pred == yte), np.bincount(yte).max() / len(yte)
    assert accuracy > 0.5 and accuracy > majority + 0.2, (accuracy, majority)
