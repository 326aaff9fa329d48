"""Audio data from local audiofolders (modalities/audio/data.py, mmssl/sources.py), end to end.

Every WAV is written by the test into ``tmp_path`` (soundfile); nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmssl.errors import DataError
from mmssl.modalities.audio.data import SAMPLE_RATE, AudioReadError, StreamingAudio, decode, open_audio

ROOT = Path(__file__).resolve().parents[2]
SPEAKERS = {"spk_low": 140.0, "spk_mid": 320.0, "spk_high": 700.0}  # one pitch per speaker


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    """Keep the Arrow files ``datasets`` writes for an audiofolder out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def speech_like(f0: float, seconds: float, seed: int) -> np.ndarray:
    """A voiced tone at ``f0`` with two harmonics, a slow amplitude envelope and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f = f0 * (1 + 0.02 * rng.standard_normal())
    tone = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t + 1.0) + 0.25 * np.sin(6 * np.pi * f * t + 2.0)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6.28))
    return (0.3 * tone * envelope + 0.03 * rng.standard_normal(len(t))).astype(np.float32)


def write_class_folders(root: Path, per_split: dict[str, int], seconds: float = 0.5) -> dict[Path, str]:
    """``root/<split>/<speaker>/<k>.wav``: class subfolders give audiofolder a ``label`` column.
    Returns {file: speaker}."""
    files = {}
    for split, n in per_split.items():
        for s, (speaker, f0) in enumerate(SPEAKERS.items()):
            for k in range(n):
                path = root / split / speaker / f"{split}_{k}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, speech_like(f0, seconds, seed=100 * s + 10 * k + (split == "test")), SAMPLE_RATE)
                files[path] = speaker
    return files


def write_metadata_folder(root: Path) -> dict[str, dict[str, str]]:
    """``root/<split>/metadata.csv`` with ``file_name,speaker_id`` (flat folders, no class subfolders).
    The test split also holds a speaker that train never saw. Returns {split: {file name: speaker}}."""
    layout = {"train": ["anna", "bob", "anna", "cleo", "bob", "cleo"], "test": ["bob", "anna", "zed"]}
    out = {}
    for split, speakers in layout.items():
        (root / split).mkdir(parents=True)
        rows, out[split] = ["file_name,speaker_id"], {}
        for k, speaker in enumerate(speakers):
            name = f"utt{k}.wav"
            sf.write(root / split / name, speech_like(200.0 + 50 * k, 0.3, seed=k), SAMPLE_RATE)
            rows.append(f"{name},{speaker}")
            out[split][name] = speaker
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    return out


def add_bad_files(folder: Path) -> list[str]:
    """An unreadable file (random bytes named .wav) and an empty WAV, beside good files."""
    (folder / "garbage.wav").write_bytes(np.random.default_rng(1).bytes(900))
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    return ["garbage.wav", "empty.wav"]


def row_path(source, i: int) -> Path:
    """The file behind item ``i`` of an HFAudio source."""
    return Path(source.ds[source.rows[i]][source.column]["path"])


# --- decoding -------------------------------------------------------------------------------------


def test_decode_stereo_8k_to_mono_16k(tmp_path):
    n, sr = 4000, 8000
    t = np.arange(n) / sr
    left, right = 0.6 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t + 0.5)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), sr, subtype="FLOAT")

    wav = decode(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == 2 * n  # 8 kHz -> 16 kHz
    # reference: the mean of the two channels, evaluated on the 16 kHz grid (away from the edges,
    # where the resampling filter sees zeros beyond the signal)
    t16 = np.arange(2 * n) / SAMPLE_RATE
    reference = 0.5 * (0.6 * np.sin(2 * np.pi * 220 * t16) + 0.3 * np.sin(2 * np.pi * 330 * t16 + 0.5))
    inner = slice(200, -200)
    np.testing.assert_allclose(wav[inner], reference[inner], atol=5e-3)

    # the same file as datasets hands it over: bytes, or an already decoded array
    from_bytes = decode({"bytes": path.read_bytes(), "path": "stereo.wav"})
    np.testing.assert_allclose(from_bytes, wav, atol=1e-6)
    from_array = decode({"array": np.stack([left, right], axis=1), "sampling_rate": sr})
    assert from_array.dtype == np.float32 and len(from_array) == 2 * n
    np.testing.assert_allclose(from_array[inner], reference[inner], atol=5e-3)


def test_decode_keeps_16k_mono_as_is(tmp_path):
    x = speech_like(300.0, 0.25, seed=0)
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(decode(tmp_path / "a.wav"), x)


def test_decode_errors_name_the_file(tmp_path):
    (tmp_path / "noise_bytes.wav").write_bytes(np.random.default_rng(0).bytes(500))
    sf.write(tmp_path / "nothing.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioReadError, match="noise_bytes.wav"):
        decode(tmp_path / "noise_bytes.wav")
    with pytest.raises(AudioReadError, match=r"nothing\.wav.*empty"):
        decode(tmp_path / "nothing.wav")
    assert issubclass(AudioReadError, DataError)  # the CLI prints it as one line


# --- map-style audiofolder -----------------------------------------------------------------------


def test_open_audio_label_mapping_from_class_folders(tmp_path):
    files = write_class_folders(tmp_path / "af", {"train": 2, "test": 1}, seconds=0.4)
    train = open_audio(str(tmp_path / "af"), "train", label_column="label")
    test = open_audio(str(tmp_path / "af"), "test", label_column="label", vocab=train.vocab)
    assert train.num_classes == test.num_classes == len(SPEAKERS)
    assert len(train) == 2 * len(SPEAKERS) and len(test) == len(SPEAKERS)
    assert train.skipped == []

    names = train.ds.features["label"].names  # audiofolder's ClassLabel: the subfolder names
    assert sorted(names) == sorted(SPEAKERS)
    for source in (train, test):
        seen = set()
        for i in range(len(source)):
            item = source[i]
            assert item["audio"].dtype == np.float32 and item["audio"].shape == (int(0.4 * SAMPLE_RATE),)
            assert 0 <= item["label"] < source.num_classes
            speaker = source.vocab[item["label"]]  # the ClassLabel names, as image and video sources give
            assert speaker == files[row_path(source, i)]
            seen.add(item["label"])
        assert seen == set(range(len(SPEAKERS)))


def test_open_audio_metadata_csv_speaker_id(tmp_path):
    layout = write_metadata_folder(tmp_path / "md")
    train = open_audio(str(tmp_path / "md"), "train", label_column="speaker_id")
    assert train.vocab == ["anna", "bob", "cleo"]
    assert train.ds.column_names == ["audio", "speaker_id"]
    for i in range(len(train)):
        assert train.vocab[train[i]["label"]] == layout["train"][row_path(train, i).name]

    test = open_audio(str(tmp_path / "md"), "test", label_column="speaker_id", vocab=train.vocab)
    labels = {row_path(test, i).name: test[i]["label"] for i in range(len(test))}
    speakers = layout["test"]
    for name, label in labels.items():  # a speaker unseen in training cannot be scored: -1
        assert label == (train.vocab.index(speakers[name]) if speakers[name] in train.vocab else -1)


def test_unreadable_and_empty_files_are_skipped_and_counted(tmp_path):
    files = write_class_folders(tmp_path / "af", {"train": 2}, seconds=0.3)
    bad = add_bad_files(tmp_path / "af" / "train" / "spk_mid")
    with pytest.warns(UserWarning, match=f"skipped 2 of {len(files) + 2} audio files") as record:
        source = open_audio(str(tmp_path / "af"), "train", label_column="label")
    message = " ".join(str(w.message) for w in record)
    for name in bad:
        assert name in message
    assert len(source) == len(files) and len(source.skipped) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rest loads without another complaint
        loaded = {row_path(source, i) for i in range(len(source)) if len(source[i]["audio"]) > 0}
    assert loaded == set(files)


def test_file_that_breaks_after_the_scan_is_replaced_with_a_warning(tmp_path):
    files = write_class_folders(tmp_path / "af", {"train": 1}, seconds=0.3)
    source = open_audio(str(tmp_path / "af"), "train", label_column="label")
    broken = row_path(source, 0)
    broken.write_bytes(b"not audio any more")
    with pytest.warns(UserWarning, match=broken.name):
        item = source[0]
    assert item["name"] != f"{source.name}[{source.rows[0]}]" and len(item["audio"]) == int(0.3 * SAMPLE_RATE)
    assert len(files) == len(source)


def test_only_unreadable_files_is_one_error_naming_them(tmp_path):
    folder = tmp_path / "bad" / "train" / "x"
    folder.mkdir(parents=True)
    add_bad_files(folder)
    with pytest.raises(DataError, match="none of its 2 audio files can be read") as error:
        open_audio(str(tmp_path / "bad"), "train")
    assert "garbage.wav" in str(error.value) and "empty.wav" in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_missing_columns_name_the_existing_ones(tmp_path):
    write_class_folders(tmp_path / "af", {"train": 1}, seconds=0.2)
    with pytest.raises(DataError, match=r"no column 'wav' \(set by --audio-column\); columns: audio, label"):
        open_audio(str(tmp_path / "af"), "train", audio_column="wav")
    with pytest.raises(DataError, match=r"no column 'speaker_id' \(set by --label-column\); columns: audio, label"):
        open_audio(str(tmp_path / "af"), "train", label_column="speaker_id")
    write_metadata_folder(tmp_path / "md")
    with pytest.raises(DataError, match=r"no column 'label'.*columns: audio, speaker_id"):
        open_audio(str(tmp_path / "md"), "train", label_column="label")


def test_missing_split_is_a_data_error(tmp_path):
    write_class_folders(tmp_path / "af", {"train": 1}, seconds=0.2)
    with pytest.raises(DataError, match="validation"):
        open_audio(str(tmp_path / "af"), "validation")


# --- streaming ------------------------------------------------------------------------------------


class _Deadline:
    """Turn a hang into a failure (a stream that never yields would otherwise block the suite)."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def fail(*_):
            raise TimeoutError(f"no result within {self.seconds} s")

        self.previous = signal.signal(signal.SIGALRM, fail)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


def test_streaming_yields_crops_of_the_right_length(tmp_path):
    write_class_folders(tmp_path / "af", {"train": 2}, seconds=0.4)  # 6400 samples
    add_bad_files(tmp_path / "af" / "train" / "spk_low")
    for crop in (3200, 8000):  # shorter than the files (a window), longer (zero-padded)
        stream = StreamingAudio(str(tmp_path / "af"), "train", None, "audio", crop, batch_size=2, world=1, rank=0,
                                seed=0, start_batch=0)
        with _Deadline(60), warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            it = iter(stream)
            crops = [next(it)["input"] for _ in range(2 * len(SPEAKERS) * 2)]  # two passes over the split
        for x in crops:
            assert x.shape == (crop,) and x.dtype.is_floating_point
            assert x.abs().max() > 0.05
        if crop > 6400:
            assert all((x[6400:] == 0).all() for x in crops)
        skipped = " ".join(str(w.message) for w in record)
        assert "garbage.wav" in skipped and "empty.wav" in skipped
        counts = [str(w.message) for w in record if "audio files that cannot be read" in str(w.message)]
        # the count comes once, not once per pass
        assert len(counts) == 1 and f"skipped 2 of {2 * len(SPEAKERS) + 2} audio files" in counts[0]


def test_streamed_audio_feature_needs_no_torchcodec_and_pickles():
    """Streamed examples are encoded through the column's feature: the one mmssl casts to keeps
    paths and bytes as they are (datasets.Audio would import torchcodec for that) and pickles into
    DataLoader workers."""
    import pickle

    import datasets

    from mmssl.sources import audio_feature

    feature = audio_feature(decode=False)
    assert isinstance(feature, datasets.Audio) and not feature.decode
    assert feature.encode_example("/data/a.wav") == {"bytes": None, "path": "/data/a.wav"}
    assert feature.encode_example({"bytes": b"RIFF", "path": "a.wav"}) == {"bytes": b"RIFF", "path": "a.wav"}
    assert pickle.loads(pickle.dumps(feature)) == feature


def test_streaming_checks_the_audio_column_up_front(tmp_path):
    write_class_folders(tmp_path / "af", {"train": 1}, seconds=0.2)
    with pytest.raises(DataError, match=r"no column 'wav'.*columns: audio, label"):
        StreamingAudio(str(tmp_path / "af"), "train", None, "wav", 3200, 2, 1, 0, 0, 0)


def test_streaming_only_unreadable_files_stops_with_an_error(tmp_path):
    folder = tmp_path / "bad" / "train" / "x"
    folder.mkdir(parents=True)
    add_bad_files(folder)
    stream = StreamingAudio(str(tmp_path / "bad"), "train", None, "audio", 3200, 2, 1, 0, 0, 0)
    with _Deadline(60), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"streamed split 'train'.*none of its 2 audio files can be read"
                                            r".*(garbage|empty)\.wav"):
            next(iter(stream))


# --- end to end: train.py on an audiofolder, then mmssl probe -------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), MMSSL_CACHE=str(tmp_path / "mmssl_cache"),
               OMP_NUM_THREADS="1")  # a tiny model: more threads only contend on a small, shared machine
    return env


@pytest.mark.slow
def test_train_and_probe_on_an_audiofolder(tmp_path):
    data = tmp_path / "speakers"
    write_class_folders(data, {"train": 4, "test": 2}, seconds=0.5)
    add_bad_files(data / "train" / "spk_high")
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "train.py", "--task", "cpc_audio", "--dataset", str(data), "--output-dir", str(run_dir),
         "--max-steps", "2", "batch_size=2", "num_workers=0", "encoder.cpc.channels=8", "encoder.cpc.context_dim=8", "crop_samples=3200",
         "objective.steps=2", "objective.num_negatives=4", "--label-column", "label"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    assert "skipped 2 of 14 audio files" in train.stderr  # the bad files are counted, not fatal
    report = json.loads((run_dir / "eval.json").read_text())
    assert set(report["speaker"]) == {"cpc", "random", "mfcc"}
    assert all(0.0 <= acc <= 1.0 for acc in report["speaker"].values())
    assert (run_dir / "encoder" / "model.safetensors").is_file()

    out = tmp_path / "r.json"
    probe = subprocess.run(
        [sys.executable, "-m", "mmssl", "probe", "--checkpoint", str(run_dir), "--dataset", str(data),
         "--label-column", "label", "--report", str(out)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "Traceback" not in probe.stderr
    probed = json.loads(out.read_text())
    chance = 1 / len(SPEAKERS)
    assert probed["majority"]["speaker"] == pytest.approx(chance)
    assert probed["speaker"]["mfcc"] > chance + 0.3  # the speakers differ in pitch: MFCCs separate them
    assert "speaker (utterance, mean+std pooled)" in probe.stdout
