"""Probes as the field runs them: statistics pooling, the 40-MFCC baseline, MAE's linear probe,
tables that name their protocol, sizes and seeds, and the learning curve of the online monitor."""
import json
import types

import numpy as np
import pytest
import torch
import torchaudio
from tiny_images import TINY_MAE, ColourImages, TinyEncoder, dark_and_light_folder, png_size, to_float

from mmssl.config import ConfigError
from mmssl.evaluation.audio import MFCC, audio_probes, pool_utterance, speaker_monitor, speaker_monitor_set
from mmssl.evaluation.linear import L2_GRID, linear_probe, mae_head, mae_linear_probe
from mmssl.evaluation.plots import learning_curve, run_learning_curve
from mmssl.evaluation.vision import image_probes
from mmssl.modalities.audio.data import CorpusSplit
from mmssl.modalities.audio.synthetic import generate_corpus

# ---------------------------------------------------------------- pooling


def test_mean_std_pooling_equals_a_plain_reference():
    frames = torch.randn(37, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    pooled = pool_utterance(frames)
    assert pooled.shape == (10,)
    for d in range(5):
        column = [float(v) for v in frames[:, d]]
        mean = sum(column) / len(column)
        std = (sum((v - mean) ** 2 for v in column) / len(column)) ** 0.5  # statistics pooling divides by T
        assert pooled[d].item() == pytest.approx(mean, rel=1e-5)
        assert pooled[5 + d].item() == pytest.approx(std, rel=1e-5)
    torch.testing.assert_close(pool_utterance(frames, "mean"), frames.mean(0))
    torch.testing.assert_close(pool_utterance(frames[:1]), torch.cat([frames[0], torch.zeros(5)]))  # one frame: std 0
    with pytest.raises(ConfigError, match="utterance_pooling must be meanstd or mean, not 'max'"):
        pool_utterance(frames, "max")


# ---------------------------------------------------------------- the MFCC baseline


def test_mfcc_baseline_is_40_coefficients_with_deltas_for_frames():
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    feats = MFCC()(wav)
    assert feats.shape == (100, 120)  # 1 s = 100 frames of 10 ms; 40 static + 40 deltas + 40 delta-deltas
    assert MFCC.UTTERANCE_DIMS == 40
    assert pool_utterance(feats[:, : MFCC.UTTERANCE_DIMS]).shape == (80,)
    deltas = torchaudio.functional.compute_deltas(feats[:, :40].T).T  # the last two frames see past the cut
    torch.testing.assert_close(feats[:-2, 40:80], deltas[:-2])
    assert MFCC()(wav[:250]).shape == (1, 120)  # under two hops: one frame, never an empty utterance


def _tilted_harmonics(rng: np.random.Generator, swing: float, seconds: float = 1.0, seg: float = 0.05) -> np.ndarray:
    """Harmonics of 160 Hz whose spectral tilt (dB per octave about 1 kHz) jumps between base + swing
    and base - swing every 50 ms. base and the level are drawn per utterance alike for every speaker,
    so a speaker is its swing: how far its spectrum spreads over time."""
    m = int(16000 * seg)
    bins = np.arange(1, 49) * 8  # 160 Hz harmonics on the 20 Hz rfft bins of a 50 ms segment
    octaves = np.log2(bins * 20 / 1000)
    base, level = rng.uniform(-6, 6), 10 ** rng.uniform(-1, 1)
    parts = []
    for sign in rng.permutation(np.repeat([1.0, -1.0], int(seconds / seg) // 2)):
        spec = np.zeros(m // 2 + 1, complex)
        spec[bins] = 10 ** ((base + sign * swing) * octaves / 20) * np.exp(2j * np.pi * rng.uniform(size=len(bins)))
        parts.append(np.fft.irfft(spec, m))
    x = np.concatenate(parts)
    return (level * 0.1 * x / x.std()).astype(np.float32)


def _spread_speakers(per_speaker: int, seed: int) -> tuple[list[np.ndarray], torch.Tensor]:
    rng = np.random.default_rng(seed)
    wavs, labels = [], []
    for speaker, swing in enumerate((0.0, 4.0, 8.0, 12.0)):
        for _ in range(per_speaker):
            wavs.append(_tilted_harmonics(rng, swing))
            labels.append(speaker)
    return wavs, torch.tensor(labels)


def old_mfcc_mean(wav: np.ndarray) -> torch.Tensor:
    """The former baseline: 13 MFCCs with deltas and delta-deltas, mean over time (39,)."""
    m = torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=13,
                                   melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40})(torch.from_numpy(wav))
    d1 = torchaudio.functional.compute_deltas(m)
    return torch.cat([m, d1, torchaudio.functional.compute_deltas(d1)]).mean(1)


def test_40_mfcc_mean_std_beats_13_mfcc_mean_when_speakers_differ_in_spectral_spread():
    (train_w, train_y), (test_w, test_y) = _spread_speakers(6, 0), _spread_speakers(6, 1)
    old = linear_probe(torch.stack([old_mfcc_mean(w) for w in train_w]), train_y,
                       torch.stack([old_mfcc_mean(w) for w in test_w]), test_y, l2=1e-3)["accuracy"]
    mfcc = MFCC()
    data = {"train_wavs": train_w, "train_y": train_y.tolist(), "test_wavs": test_w, "test_y": test_y.tolist()}
    new = speaker_monitor(mfcc.batch, data, "meanstd", MFCC.UTTERANCE_DIMS)  # the evaluation's pooling and probe
    assert new >= 0.8 and new > old + 0.2, (new, old)


# ---------------------------------------------------------------- audio probes and monitor


def test_audio_table_names_pooling_sizes_and_seeds():
    corpus = generate_corpus(num_speakers=3, train_per_speaker=3, test_per_speaker=2, seconds=(0.3, 0.4))
    train, test = CorpusSplit(corpus["train"], "toy/train"), CorpusSplit(corpus["test"], "toy/test")
    torch.manual_seed(0)
    from tiny_tasks import tiny_config

    task, cfg = tiny_config("unused")
    encoder = task.build_objective(cfg).export_encoder().eval()
    report = audio_probes({"cpc": encoder}, train, test, max_train_frames=50, seed=3, random_init_seed=4,
                          protocol="lbfgs")
    table = report["table"]
    for words in ("speaker (utterance, mean+std pooled)", "phone (frame)", "9 -> 6 utterances", "50 (of ",
                  "seed 3 (frame subset, L2's held-out part)", "random encoder initialised with seed 4", "toy/train",
                  "toy/test", "standardised", "5-fold cross-validation (utterances)", "40 coefficients", "speaker L2 chosen",
                  "phone L2 chosen"):
        assert words in table, words
    assert report["pooling"] == "meanstd" and report["sizes"]["train_frames"] == 50
    # every column's penalty is chosen per probe from the grid, and the table prints it
    assert report["linear_protocol"] == "lbfgs"
    for probe in ("speaker", "phone"):
        assert set(report["linear_l2"][probe]) == {"cpc", "mfcc"} and set(report["linear_l2"][probe].values()) <= set(L2_GRID)
    fixed = audio_probes({"cpc": encoder}, train, test, max_train_frames=50, seed=3)  # the default
    assert "at L2 0.001 (utterances) and 0.0001 (frames)" in fixed["table"] and "L2 chosen" not in fixed["table"]
    assert fixed["linear_l2"] == {"speaker": {"cpc": 1e-3, "mfcc": 1e-3}, "phone": {"cpc": 1e-4, "mfcc": 1e-4}}
    with pytest.raises(ConfigError, match="linear_protocol for audio probes must be one of lbfgs, lbfgs_fixed"):
        audio_probes({"cpc": encoder}, train, test, protocol="mae")
    mean = audio_probes({"cpc": encoder}, train, test, max_train_frames=50, pooling="mean")
    assert "speaker (utterance, mean pooled)" in mean["table"] and set(mean["speaker"]) == {"cpc", "mfcc"}
    with pytest.raises(ConfigError, match="utterance_pooling"):
        audio_probes({"cpc": encoder}, train, test, pooling="stats")


def test_speaker_monitor_set_takes_the_first_utterances_of_shared_speakers():
    corpus = generate_corpus(num_speakers=4, train_per_speaker=3, test_per_speaker=2, seconds=(0.3, 0.4))
    train, test = CorpusSplit(corpus["train"], "train"), CorpusSplit(corpus["test"], "test")
    data = speaker_monitor_set(train, test, per_speaker=2, max_speakers=3, max_seconds=0.25)
    assert data["train_y"] == [0, 0, 1, 1, 2, 2] and data["test_y"] == [0, 0, 1, 1, 2, 2]
    assert all(len(w) == 4000 for w in data["train_wavs"] + data["test_wavs"])
    np.testing.assert_array_equal(data["train_wavs"][2], train[3]["audio"][:4000])  # speaker 1's first utterance
    assert speaker_monitor_set(train, test, per_speaker=3) is None  # no speaker has 3 test utterances


# ---------------------------------------------------------------- kNN as solo-learn runs it


def test_knn_defaults_are_solo_learns_and_match_a_one_hot_vote_reference():
    import inspect

    from mmssl.evaluation.knn import knn_classify, knn_predict

    defaults = inspect.signature(knn_predict).parameters
    assert defaults["ks"].default == (20, 200) and defaults["temperature"].default == 0.07
    g = torch.Generator().manual_seed(5)
    train_x, test_x = torch.randn(300, 12, generator=g) * 4 + 1, torch.randn(40, 12, generator=g)
    train_y, test_y = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (40,), generator=g)
    got = knn_predict(train_x, train_y, test_x)
    a = train_x / train_x.norm(dim=1, keepdim=True)  # cosine similarity of L2-normalised features
    q = test_x / test_x.norm(dim=1, keepdim=True)
    for k in (20, 200):
        sim, idx = (q @ a.T).topk(k, dim=1)
        one_hot = torch.zeros(40, k, 5)
        one_hot[torch.arange(40)[:, None], torch.arange(k)[None], train_y[idx]] = 1.0
        votes = (one_hot * (sim / 0.07).exp()[..., None]).sum(1)  # (40, 5): summed exp(sim / T) per class
        assert torch.equal(got[k], votes.argmax(1)), k
        assert knn_classify(train_x, train_y, test_x, test_y)[k] == pytest.approx((votes.argmax(1) == test_y).float().mean().item())


# ---------------------------------------------------------------- MAE linear probe and image tables


def test_mae_linear_probe_learns_a_separable_set_with_a_plain_batchnorm():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 3, generator=g)
    train_x, test_x = torch.randn(600, 20, generator=g) * 5 + 2, torch.randn(300, 20, generator=g) * 5 + 2
    train_y, test_y = (train_x @ w).argmax(1), (test_x @ w).argmax(1)  # linearly separable, 3 classes
    head = mae_head(20, 3)
    assert head[0].weight is None and head[0].bias is None and not head[0].affine
    assert [name for name, _ in head.named_parameters()] == ["1.weight", "1.bias"]
    state = torch.random.get_rng_state()
    with torch.no_grad():  # as inside the online monitor
        res = mae_linear_probe(train_x, train_y, test_x, test_y, epochs=30, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # nothing drawn from the global RNG
    assert res["accuracy"] > 0.9 and res["train_accuracy"] > 0.9, res
    assert mae_linear_probe(train_x, train_y, test_x, test_y, epochs=30, seed=1) == res  # repeatable


def test_image_table_states_protocol_sizes_and_seed_and_offers_the_mae_probe():
    train, test = ColourImages(60, "colours/train"), ColourImages(30, "colours/test", seed=1)
    report = image_probes({"tiny": TinyEncoder()}, train, test, to_float, ks=(5,), linear_protocol="mae", seed=2,
                          random_init_seed=3)
    assert report["linear"]["tiny"] > 0.9 and report["linear_protocol"] == "mae"
    table = report["table"]
    for words in ("60 images", "30 images", "seed 2", "random encoder initialised with seed 3", "L2-normalised",
                  "exp(sim / 0.07)", "BatchNorm without affine", "linear (MAE)", "every column alike"):
        assert words in table, words
    lbfgs = image_probes({"tiny": TinyEncoder()}, train, test, to_float, ks=(5,))
    for words in ("standardised with the train mean and std", "seed 0 (subsets, L2's held-out part)",
                  "L2 chosen from 1e-6..1e5", "20% of train held out"):
        assert words in lbfgs["table"], words
    chosen = lbfgs["table"].splitlines()[-2].split()  # the row of each column's penalty, above RankMe's
    assert chosen[:3] == ["linear", "L2", "chosen"] and [float(v) for v in chosen[3:]] == [
        lbfgs["linear_l2"]["tiny"], lbfgs["linear_l2"]["pixels"]]
    fixed = image_probes({"tiny": TinyEncoder()}, train, test, to_float, ks=(5,), linear_protocol="lbfgs_fixed")
    assert "at L2 0.0001" in fixed["table"] and "L2 chosen" not in fixed["table"]
    assert set(fixed["linear_l2"].values()) == {1e-4}
    with pytest.raises(ConfigError, match="linear_protocol must be one of lbfgs, lbfgs_fixed, mae, not 'sgd'"):
        image_probes({"tiny": TinyEncoder()}, train, test, to_float, linear_protocol="sgd")


# ---------------------------------------------------------------- learning curve


def _metrics(path, key):
    rows = [{"step": s, "loss": 1.0 / s, "wall_s": 2.0 * s, "samples": 64 * s} for s in range(1, 9)]
    rows += [{"step": s, key: 0.1 * s, "wall_s": 2.0 * s + 0.5, "samples": 64 * s} for s in (2, 4, 6, 8)]
    rows += [{"step": 6, key: 0.55, "wall_s": 13.0, "samples": 384}]  # a resumed run logs step 6 again
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_learning_curve_png_and_when_a_run_gets_one(tmp_path):
    key = "monitor/knn_top1"
    _metrics(tmp_path / "metrics.jsonl", key)
    out = learning_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png", key, {"random": 0.2, "pixels": 0.3})
    assert png_size(out) == (800, 600)
    with pytest.raises(ValueError, match="no rows with monitor/speaker_acc, wall_s and samples"):
        learning_curve(tmp_path / "metrics.jsonl", tmp_path / "bad.png", "monitor/speaker_acc")

    (tmp_path / "config.yaml").write_text("dataset: demo\nsplit: train\neval_split: null\nlabel_column: null\n")
    cfg = types.SimpleNamespace(dataset="demo", dataset_config=None, split="train", eval_split=None, label_column=None)
    calls = []

    def baselines():
        calls.append(1)
        return {"random encoder": 0.25}

    curve = run_learning_curve(cfg, tmp_path, key, baselines)
    assert curve["baselines"] == {"random encoder": 0.25} and png_size(curve["path"]) == (800, 600)
    assert curve["path"] == str(tmp_path / "plots" / "learning_curve.png")
    other = types.SimpleNamespace(**{**vars(cfg), "dataset": "/data/elsewhere", "label_column": "speaker"})
    assert run_learning_curve(other, tmp_path, key, baselines) is None  # another dataset: its baselines would not compare
    assert run_learning_curve(cfg, tmp_path, "monitor/speaker_acc", baselines) is None  # the monitor was off
    assert len(calls) == 1  # baselines are measured only for a curve that is drawn


@pytest.mark.slow
def test_audio_run_logs_the_speaker_monitor_and_draws_its_learning_curve(tmp_path):
    from conftest import tiny_cpc

    from mmssl.cli import main
    from mmssl.run import resolve_config, run_training

    overrides = {**tiny_cpc(probe_max_utterances=48, probe_max_seconds=1.0), "monitor_every": 2,
                 "monitor_seconds": 0.5, "monitor_speakers": 8}
    task, cfg = resolve_config("cpc_audio", None, {"output_dir": str(tmp_path / "run"), "max_steps": 4},
                               [f"{k}={v}" for k, v in overrides.items()])
    report = run_training(task, cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    monitored = [r for r in rows if "monitor/speaker_acc" in r]
    assert [r["step"] for r in monitored] == [2, 4]
    assert all(0 <= r["monitor/speaker_acc"] <= 1 and r["wall_s"] > 0 and r["samples"] == 4 * r["step"]
               for r in monitored)
    curve = report["learning_curve"]
    assert set(curve["baselines"]) == {"random encoder", "mfcc"} and png_size(curve["path"]) == (800, 600)
    assert "speaker (utterance, mean+std pooled)" in report["table"]

    out = tmp_path / "mean.json"
    assert main(["probe", "--checkpoint", str(tmp_path / "run"), "--utterance-pooling", "mean",
                 "--report", str(out)]) in (0, None)
    probed = json.loads(out.read_text())
    assert probed["pooling"] == "mean" and "speaker (utterance, mean pooled)" in probed["table"]
    assert report["linear_l2"]["speaker"]["cpc"] == 1e-3  # the run's probes took the fixed L2; `probe` can choose
    chosen = tmp_path / "chosen.json"
    assert main(["probe", "--checkpoint", str(tmp_path / "run"), "--linear-protocol", "lbfgs",
                 "--report", str(chosen)]) in (0, None)
    probed = json.loads(chosen.read_text())
    assert probed["linear_protocol"] == "lbfgs" and "speaker L2 chosen" in probed["table"]
    with pytest.raises(ConfigError, match="utterance_pooling must be meanstd or mean, not 'max'"):
        resolve_config("cpc_audio", None, {"output_dir": str(tmp_path / "bad")}, ["utterance_pooling=max"])
    with pytest.raises(ConfigError, match="linear_protocol for audio probes must be one of lbfgs, lbfgs_fixed"):
        resolve_config("cpc_audio", None, {"output_dir": str(tmp_path / "bad")}, ["linear_protocol=mae"])


def test_image_run_draws_its_learning_curve_with_random_and_pixel_baselines(tmp_path):
    from mmssl.cli import main

    dark_and_light_folder(tmp_path / "images", train=8, test=4)
    tiny = TINY_MAE
    run = tmp_path / "run"
    assert main(["train", "--task", "mae_image", "--dataset", str(tmp_path / "images"), "--label-column", "label",
                 "--output-dir", str(run), "--max-steps", "2", "batch_size=4", "num_workers=0", "monitor_every=1",
                 "linear_protocol=mae", *tiny]) in (0, None)
    report = json.loads((run / "eval.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "monitor/knn_top1" in r] == [1, 2]
    assert all(1 <= r["monitor/rankme"] <= 4 for r in rows if "monitor/knn_top1" in r)  # 4 monitor test images
    assert set(report["learning_curve"]["baselines"]) == {"random encoder", "pixels"}
    assert png_size(run / "plots" / "learning_curve.png") == (800, 600)
    assert "linear (MAE)" in report["table"] and "16 images" in report["table"]
