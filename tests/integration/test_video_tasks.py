"""The video tasks end to end: `mmssl track` on a DAVIS-layout root (masks, overlays, report),
its bad inputs, a missing video column, and a short colorize_video run that must track better
than its randomly initialised encoder on the embedded demo."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_errors import assert_one_error, run

from mmssl.cli import main
from mmssl.errors import MmsslError
from mmssl.evaluation.overlay import load_palette_png
from mmssl.evaluation.video import features_for
from mmssl.modalities.video import render_scene, write_video
from mmssl.modalities.video.synthetic import write_davis_sequence
from mmssl.registry import TASKS
from mmssl.run import load_tasks


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    """A DAVIS-2017 layout root with two 16-frame 128 px sequences of the demo renderer."""
    root = tmp_path_factory.mktemp("davis")
    names = []
    for seed in (5, 6):
        scene = render_scene(seed, frames=16, size=128)
        write_davis_sequence(root, f"seq{seed}", scene["cam0"], scene["masks"])
        names.append(f"seq{seed}")
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("\n".join(names) + "\n")
    (sets / "train.txt").write_text("")
    return root


def test_track_writes_masks_overlays_and_report(davis, tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "r.json"
    assert main(["track", "--checkpoint", "random", "--davis", str(davis), "--output", str(out),
                 "--report", str(report), "--context", "4"]) == 0
    printed = capsys.readouterr().out
    assert "J&F-Mean" in printed
    scores = json.loads(report.read_text())
    assert 0.0 <= scores["summary"]["J&F-Mean"] <= 1.0 and scores["sequences"] == 2
    assert scores["settings"]["context"] == 4
    for seq in ("seq5", "seq6"):
        pngs = sorted((out / seq).glob("*.png"))
        assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(16)]
        first, palette = load_palette_png(pngs[0])
        gt, _ = load_palette_png(davis / "Annotations" / "480p" / seq / "00000.png")
        np.testing.assert_array_equal(first, gt)  # frame 0 is the given annotation
        assert palette is not None and (out / f"{seq}.mp4").stat().st_size > 0


def test_pixel_baseline_tracks_a_rendered_scene(davis, tmp_path):
    report = tmp_path / "pixels.json"
    assert main(["track", "--baseline", "pixels", "--davis", str(davis), "--report", str(report)]) == 0
    # the objects move: propagation with raw Lab pixels must follow them better than keeping
    # the first frame's masks still
    from mmssl.evaluation.davis import evaluate_sequence, summarize
    from mmssl.modalities.video import DavisRoot

    root = DavisRoot(davis, "val")
    still = summarize({s: evaluate_sequence(root.masks(s).numpy(), root.masks(s)[:1].expand_as(root.masks(s)).numpy())
                       for s in root.sequences})
    assert json.loads(report.read_text())["summary"]["J&F-Mean"] > still["J&F-Mean"] + 0.05


@pytest.mark.slow
def test_track_bad_inputs_are_one_line(davis, tmp_path):
    missing = run(tmp_path, "track", "--checkpoint", "random", "--davis", str(tmp_path / "nope"), module=True)
    assert_one_error(missing, "nope")
    no_features = run(tmp_path, "track", "--davis", str(davis), module=True)
    assert_one_error(no_features, "--checkpoint")
    bad_split = run(tmp_path, "track", "--checkpoint", "random", "--davis", str(davis), "--split", "dev", module=True)
    assert_one_error(bad_split, "dev")


def test_missing_video_column_names_the_columns(tmp_path):
    clip = write_video(tmp_path / "a.mp4", render_scene(1, frames=8, size=32)["cam0"])
    datasets.Dataset.from_dict({"clip": [str(clip)] * 4}).save_to_disk(str(tmp_path / "ds"))
    result = run(tmp_path, "--task", "colorize_video", "--dataset", str(tmp_path / "ds"), "--max-steps", "1",
                 "--output-dir", str(tmp_path / "run"), "num_workers=0", "batch_size=2", "evaluate=false")
    assert_one_error(result, "video", "clip")


def test_a_folder_of_frames_is_not_mistaken_for_videos(tmp_path):
    (tmp_path / "frames").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "frames" / "0.png")
    result = run(tmp_path, "--task", "tcn_video", "--dataset", str(tmp_path / "frames"), "--max-steps", "1",
                 "--output-dir", str(tmp_path / "run"), "num_workers=0", "evaluate=false")
    assert_one_error(result, "video")


@pytest.mark.slow
def test_colorization_learns_to_track_better_than_its_random_encoder(tmp_path):
    """A short colorize_video run on the embedded videos: its features propagate the first-frame
    masks (J&F) clearly better than the same encoder randomly initialised."""
    from mmssl.encoders.io import load_encoder
    from mmssl.run import resolve_config
    from mmssl.trainer import train

    task, cfg = resolve_config("colorize_video", None, {"output_dir": str(tmp_path / "run"), "max_steps": 150},
                               ["num_workers=0", "evaluate=false", "track_max_sequences=4", "overlay=false",
                                "align_max_scenes=2"])
    torch.manual_seed(0)
    objective, _ = train(task, cfg)
    from mmssl.encoders.io import save_encoder

    save_encoder(objective.export_encoder(), tmp_path / "run" / "encoder", **task.encoder_meta(cfg))
    report = task.evaluate(cfg, load_encoder(tmp_path / "run"), tmp_path / "run")
    tracking = report["tracking"]
    assert tracking["colorize_video"]["J&F"] > tracking["random"]["J&F"] + 0.15, report["table"]


def test_an_untrained_encoder_is_drawn_from_the_runs_seed_plus_one(tmp_path):
    # `track --checkpoint random:DIR` must score the same net as DIR's own evaluation (Task.random_encoder:
    # seed + 1), and two calls the same net: unseeded, each process drew another one.
    import dataclasses

    import yaml

    from mmssl.cli import _tracking_features
    from mmssl.encoders.io import save_encoder

    load_tasks()
    task = TASKS.get("colorize_video")()
    cfg = dataclasses.replace(task.default_config(), seed=3)
    trained = task.build_encoder(cfg)
    save_encoder(trained, tmp_path / "encoder", **task.encoder_meta(cfg))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 3}))
    frames = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    state = torch.random.get_rng_state()
    label, features = _tracking_features(f"random:{tmp_path}", None)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream does not move
    assert "seed 4" in label
    expected = features_for(task.random_encoder(cfg, trained), task.input_kind)(frames)
    torch.testing.assert_close(features(frames), expected)
    torch.testing.assert_close(_tracking_features(f"random:{tmp_path}", None)[1](frames), expected)
    other = _tracking_features(f"random:{tmp_path}", None, seed=0)[1](frames)  # --seed 0: drawn from 1
    assert not torch.allclose(other, expected)
    a, b = (_tracking_features("random", None)[1](frames) for _ in range(2))
    torch.testing.assert_close(a, b)
    for checkpoint, baseline in ((str(tmp_path), None), (None, "pixels")):  # nothing to draw: refused, not ignored
        with pytest.raises(MmsslError, match="--seed draws an untrained encoder"):
            _tracking_features(checkpoint, baseline, seed=1)
