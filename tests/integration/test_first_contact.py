"""A new user's first runs on their own data, one test per case: a Hub snapshot and the other
layouts ``datasets`` loads train for every modality; unlabelled data trains and exits 0; the probe
finds an imagefolder's labels; a few long videos fill a batch; a bad --dataset is one line before
anything is printed, and an unreachable Hub fails at once.

Each case runs ``train.py`` / ``python -m mmssl`` in a subprocess, offline (except the unreachable
Hub), on data generated under a temporary folder.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest
from layouts import HUB_ID, write_layout, write_videos
from test_cli_errors import ROOT, TINY, _env, assert_one_error


def run(tmp_path, *args: str, module: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """``train.py args`` (or ``python -m mmssl args``), offline unless ``env`` says otherwise."""
    cmd = [sys.executable, "-m", "mmssl", *args] if module else [sys.executable, "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env or _env(tmp_path), capture_output=True, text=True, timeout=300,
                          check=False)

TINY_IMAGE = ["--max-steps", "2", "batch_size=2", "num_workers=0", "encoder.vit.dim=16", "encoder.vit.depth=1", "encoder.vit.heads=2",
              "image_size=16", "objective.proj_hidden=8", "objective.proj_dim=8", "probe_max_train=50", "probe_max_test=50"]
TINY_VIDEO = ["--max-steps", "2", "batch_size=2", "num_workers=0", "evaluate=false", "frame_size=32",
              "encoder.dense_convnet.widths=8,8,8", "quantizer_frames=16", "clusters=4"]


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}\n{result.stdout[-2000:]}"
    assert "Traceback" not in result.stderr
    return result.stdout


# --- every layout datasets loads ------------------------------------------------------------------


def test_audio_trains_on_a_hub_snapshot_and_probes_its_speaker_column(tmp_path):
    snap = write_layout("snapshot", "audio", tmp_path / "data", n_train=8)
    out = ok(run(tmp_path, "--task", "cpc_audio", "--dataset", snap, "--output-dir", str(tmp_path / "run"),
                 *[a for a in TINY if a != "evaluate=false"], "--max-steps", "2"))
    assert "labels: column 'speaker_id'" in out
    assert "speaker (utterance, mean+std pooled)" in out  # the probe table


@pytest.mark.parametrize("kind", ["parquet", "csv", "hub_cache"])
def test_image_trains_on_tables_and_the_offline_hub_cache(tmp_path, kind):
    spec = write_layout(kind, "image", tmp_path / "hf_home" if kind == "hub_cache" else tmp_path / "data")
    assert (spec == HUB_ID) == (kind == "hub_cache")
    out = ok(run(tmp_path, "--task", "simclr_image", "--dataset", spec, "--output-dir", str(tmp_path / "run"),
                 *TINY_IMAGE))
    assert "labels: column 'label'" in out and "knn k=20" in out
    if kind == "parquet":  # the same command again resumes: the label column chosen again matches the saved one
        ok(run(tmp_path, "--task", "simclr_image", "--dataset", spec, "--output-dir", str(tmp_path / "run"),
               *TINY_IMAGE, "evaluate=false"))  # evaluate is a runtime field: it may change on resume


@pytest.mark.parametrize("kind", ["snapshot_readme", "jsonl"])
def test_video_trains_on_a_table_of_relative_paths(tmp_path, kind):
    spec = write_layout(kind, "video", tmp_path / "data")
    config = ["--dataset-config", "clean"] if kind == "snapshot_readme" else []
    ok(run(tmp_path, "--task", "colorize_video", "--dataset", spec, *config, "--output-dir", str(tmp_path / "run"),
           *TINY_VIDEO))
    assert (tmp_path / "run" / "encoder").is_dir()


# --- unlabelled data is normal --------------------------------------------------------------------


def test_unlabelled_audio_trains_evaluates_what_it_can_and_exits_0(tmp_path):
    import soundfile as sf

    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for k in range(6):
        t = np.arange(8000) / 16000
        sf.write(wavs / f"rec{k}.wav", (0.3 * np.sin(2 * np.pi * (150 + 40 * k) * t)).astype(np.float32), 16000)
    out = ok(run(tmp_path, "--task", "cpc_audio", "--dataset", str(wavs), "--output-dir", str(tmp_path / "run"),
                 *[a for a in TINY if a != "evaluate=false"], "log_every=1"))
    lines = out.splitlines()
    hint = next(i for i, line in enumerate(lines) if line.startswith("no labels: the evaluation skips"))
    # decided before training: printed with the config, before the evaluation's table (the
    # training progress goes to stderr), and repeated under that table
    assert hint < lines.index("") < next(i for i, line in enumerate(lines) if line.startswith("collapse monitor"))
    assert lines[hint].startswith("no labels") and sum(line == lines[hint] for line in lines) == 2
    assert f"mmssl probe --checkpoint {tmp_path / 'run'} --dataset {wavs} --label-column" in lines[hint]
    assert "collapse monitor" in out and (tmp_path / "run" / "eval.json").is_file()


# --- labels where the convention puts them --------------------------------------------------------


def test_probe_finds_an_imagefolders_label_column(tmp_path):
    from PIL import Image

    from mmssl.encoders.convnet import ConvNetSettings
    from mmssl.encoders.io import build_encoder, save_encoder
    from mmssl.tasks.sections import ImageEncoders
    from mmssl.tasks.simclr_image import SimCLRImage

    folder = tmp_path / "cifar_like"
    for split, n in (("train", 4), ("test", 2)):
        for c, colour in enumerate(((220, 30, 30), (30, 30, 220))):
            (folder / split / f"class{c}").mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (16, 16), tuple(v + 5 * k for v in colour)).save(folder / split / f"class{c}" / f"{k}.png")
    task = SimCLRImage()
    cfg = dataclasses.replace(task.default_config(), encoder=ImageEncoders(convnet=ConvNetSettings(widths=(8, 8))))
    save_encoder(build_encoder(task.encoder_spec(cfg)), tmp_path / "run" / "encoder", task="simclr_image",
                 modality="image")
    out = ok(run(tmp_path, "probe", "--checkpoint", str(tmp_path / "run"), "--dataset", str(folder), module=True))
    assert "labels: column 'label'" in out and "knn k=20" in out


# --- clips, not videos, fill a batch --------------------------------------------------------------


def test_eight_long_videos_fill_a_batch_of_16(tmp_path):
    write_videos(tmp_path / "videos", 8, 0, frames=48)  # colorize_video: 4 frames 3 apart -> 4 clips each
    ok(run(tmp_path, "--task", "colorize_video", "--dataset", str(tmp_path / "videos"), "--output-dir",
           str(tmp_path / "run"), *TINY_VIDEO[:2], "num_workers=0", "evaluate=false", "encoder.dense_convnet.widths=8,8,8",
           "quantizer_frames=16", "clusters=4", "frame_size=32"))
    assert (tmp_path / "run" / "encoder").is_dir()


# --- errors before work ---------------------------------------------------------------------------


def test_bad_dataset_is_one_line_before_the_config(tmp_path):
    result = run(tmp_path, "--task", "simclr_image", "--dataset", "./no/such/folder", "--output-dir",
                 str(tmp_path / "run"), *TINY_IMAGE)
    assert_one_error(result, "./no/such/folder")
    assert result.stdout.strip() == "" and not (tmp_path / "run").exists()


def test_a_good_run_prints_only_what_differs_from_the_defaults(tmp_path):
    snap = write_layout("parquet", "image", tmp_path / "data")
    out = ok(run(tmp_path, "--task", "simclr_image", "--dataset", snap, "--output-dir", str(tmp_path / "run"),
                 *TINY_IMAGE, "evaluate=false"))
    head = out.split("(all of it in")[0]
    assert "batch_size=2" in head and "encoder.vit.dim=16" in head
    assert "adam_beta2" not in head and "weight_decay" not in head  # defaults stay in config.yaml
    assert "adam_beta2" in (tmp_path / "run" / "config.yaml").read_text()


def test_unreachable_hub_fails_at_once_in_one_line(tmp_path):
    """An endpoint that refuses connections: one request, one line (no retries with back-off)."""
    env = {k: v for k, v in _env(tmp_path).items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    start = time.monotonic()
    result = run(tmp_path, "--task", "cpc_audio", "--dataset", "someone/not-cached", "--output-dir",
                 str(tmp_path / "run"), *TINY, env=env)
    elapsed = time.monotonic() - start
    assert_one_error(result, "someone/not-cached", "not reachable", "--dataset")
    assert elapsed < 60  # the process, torch import included; the Hub part is timed below


def test_unreachable_hub_costs_one_request(monkeypatch):
    from huggingface_hub import constants

    from mmssl.errors import DataError
    from mmssl.sources import open_split

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    start = time.monotonic()
    with pytest.raises(DataError, match="not reachable"):
        open_split("someone/not-cached", "train")
    assert time.monotonic() - start < 2.0


def test_bad_output_folder_and_davis_root_fail_before_the_config(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run(tmp_path, "--task", "cpc_audio", "--output-dir", str(tmp_path / "a_file"), *TINY)
    assert_one_error(result, "a_file", "file")
    assert result.stdout.strip() == ""
    write_videos(tmp_path / "videos", 2, 0)
    result = run(tmp_path, "--task", "colorize_video", "--dataset", str(tmp_path / "videos"), "--output-dir",
                 str(tmp_path / "run"), f"davis_root={tmp_path / 'no_davis'}", "track_protocol=crw", *TINY_VIDEO)
    assert_one_error(result, "no_davis")
    assert result.stdout.strip() == "" and not (tmp_path / "run").exists()
