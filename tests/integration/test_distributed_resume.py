"""A two-process run killed after a checkpoint resumes to what the uninterrupted run reaches, with
state that differs from process to process (SwAV's queue of each process's own embeddings)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # two torchrun launches of a few seconds of training each

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# queue_size 12 at 4 images a process fills the queue in the first 3 steps; Sinkhorn reads it from step 4 on.
OVERRIDES = ["batch_size=4", "num_workers=0", "image_size=16", "encoder.convnet.widths=8,8,8,8",
             "objective.proj_hidden=16", "objective.proj_dim=8", "objective.num_prototypes=8",
             "views=[{crops: 2, min_scale: 0.4}, {crops: 2, size: 8, min_scale: 0.05, max_scale: 0.4}]", "objective.queue_size=12", "evaluate=false", "monitor_every=0", "save_every=3"]


def _train(out: Path) -> None:
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "train.py", "--task", "swav_image",
           "--output-dir", str(out), "--max-steps", "6", *OVERRIDES]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_swav_resumes_each_process_queue(tmp_path):
    out = tmp_path / "run"
    _train(out)
    last = out / "checkpoints" / "step_0000006"
    straight = tmp_path / "straight"
    shutil.copytree(last, straight)
    queues = [load_file(str(straight / f"process_buffers_{r}.safetensors"))["queue"] for r in (0, 1)]
    assert not torch.equal(queues[0], queues[1])  # each process queued its own embeddings

    shutil.rmtree(last)  # as if killed after step 3's checkpoint: the same command resumes from there
    _train(out)
    for name in ("process_buffers_0.safetensors", "process_buffers_1.safetensors", "model.safetensors"):
        want, got = load_file(str(straight / name)), load_file(str(last / name))
        assert want.keys() == got.keys(), name
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=f"{name}: {key}")
