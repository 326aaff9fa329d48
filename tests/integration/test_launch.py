"""The real command lines: accelerate launch with bf16, with two processes, with tensorboard."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_cpc

pytestmark = pytest.mark.slow  # each test trains or launches processes for tens of seconds

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def launch(tmp_path, *launch_args, extra=()):
    out = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in tiny_cpc(probe_max_utterances=48, probe_max_seconds=1.0).items()]
    cmd = [ACCELERATE, "launch", "--num_machines", "1", "--dynamo_backend", "no", *launch_args, "train.py",
           "--task", "cpc_audio", "--output-dir", str(out), "--max-steps", "3", *extra, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_bf16_mixed_precision_runs(tmp_path):
    out, proc = launch(tmp_path, "--num_processes", "1", "--mixed_precision", "bf16")
    assert "mixed precision bf16" in proc.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    report = json.loads((out / "eval.json").read_text())
    assert set(report["speaker"]) == {"cpc", "random", "mfcc"}


def test_two_processes_on_cpu_with_tensorboard(tmp_path):
    out, proc = launch(tmp_path, "--multi_gpu", "--num_processes", "2", "--mixed_precision", "no",
                       extra=["--log-with", "tensorboard"])
    assert "2 process(es)" in proc.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one line per step, written once (main process)
    assert rows[0]["samples_per_s"] > 0
    assert list(out.glob("cpc_audio/events.out.tfevents.*")), list(out.rglob("*"))
    assert (out / "encoder" / "model.safetensors").is_file()
