"""Every registered task trains on a local folder of its modality in two processes (gloo, torchrun):
an imagefolder, an audiofolder, a folder of two-camera video scenes. One torchrun runs them all, so
the process group starts once; each task runs two steps with the smoke test's tiny settings."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from layouts import png_bytes, wav_bytes

import mmssl.tasks  # noqa: F401
from mmssl import TASKS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _image_folder(root: Path) -> Path:
    for split, n in (("train", 8), ("test", 4)):
        for k in range(n):
            folder = root / split / ("dark" if k % 2 else "light")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}{k}.png").write_bytes(png_bytes(k + (100 if split == "test" else 0), size=32))
    return root


def _audio_folder(root: Path) -> Path:
    for split, n in (("train", 8), ("test", 4)):
        for k in range(n):
            folder = root / split / f"spk{k % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}{k}.wav").write_bytes(wav_bytes(k, seconds=0.5))
    return root


def _video_folder(root: Path) -> Path:
    from mmssl.modalities.video import render_scene, write_video

    for k in range(4):  # each scene seen by two cameras, as tcn_video's multi-view pairs need
        scene = root / f"scene{k}"
        scene.mkdir(parents=True, exist_ok=True)
        cams = render_scene(k, frames=16, size=32)
        for cam in ("cam0", "cam1"):
            write_video(scene / f"{cam}.mp4", cams[cam])
    return root


def test_every_task_trains_on_a_local_folder_in_two_processes(tmp_path):
    folders = {"image": _image_folder(tmp_path / "images"), "audio": _audio_folder(tmp_path / "audio"),
               "video": _video_folder(tmp_path / "videos")}
    # the library's tasks: other tests register tiny tasks of their own in this process
    names = [name for name in TASKS.names() if TASKS.get(name).__module__.startswith("mmssl.")]
    assert "cpc_audio" in names and "simclr_image" in names
    jobs = [f"{name}={folders[TASKS.get(name).modality]}" for name in names]
    out = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "every_task_worker.py"), str(out), *jobs]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in names:
        report = json.loads((out / f"{name}.json").read_text())
        assert report["world"] == 2, name
        assert len(report["losses"]) == 2 and all(math.isfinite(x) for x in report["losses"]), (name, report)
        assert report["weight_gap"] == 0.0, (name, report)  # every rank holds the same weights
        assert (out / name / "encoder" / "model.safetensors").is_file(), name
        assert all(b["ignored"] for b in report["buffers"].values()), (name, report["buffers"])
    # Buffers kept out of DDP's copy from process 0 before each forward: SwAV's queue of each process's
    # own embeddings stays its own (the copy had replaced all but the last step's rows with process 0's),
    # and MoCo's queue and the memory bank, built from gathered values, stay identical without the copy.
    queue = json.loads((out / "swav_image.json").read_text())["buffers"]["queue"]
    assert queue["rows_differing"] == queue["rows"] == 16, queue
    for name, buffer in (("moco_image", "queue"), ("densecl_image", "dense_queue"), ("exemplar_image", "bank")):
        state = json.loads((out / f"{name}.json").read_text())["buffers"][buffer]
        assert state["rows_differing"] == 0 and state["rows"] > 0, (name, state)
