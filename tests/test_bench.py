"""``mmssl bench``: the report's fields, one-line errors, and FLOP counts that follow the model.

The figures themselves depend on the machine and its load, so only their presence and signs are checked.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from mmssl.bench import meters, models, peers
from mmssl.cli import main

CPU = torch.device("cpu")


def test_tiny_mae_image_bench_writes_report(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["bench", "--tasks", "mae_image", "--size", "tiny", "--steps", "1", "--warmup", "0",
                 "--repeats", "1", "--report", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["matmul_peak_flops"] > 0
    row = report["tasks"]["mae_image"]
    assert row["samples_per_s"] > 0
    assert row["flops_per_sample"] > 0
    assert row["peak_memory_mb"] > 0
    assert row["flops_per_s"] > 0 and row["utilisation"] > 0
    if row["ratio"] == peers.NOT_INSTALLED:
        assert row["peer"]["status"] == peers.NOT_INSTALLED
    else:
        assert row["ratio"] > 0 and row["peer"]["samples_per_s"] > 0 and row["peer"]["flops_per_sample"] > 0
    printed = capsys.readouterr().out
    assert "matmul peak" in printed and "mae_image" in printed and str(out) in printed


@pytest.mark.parametrize("args, needle", [
    (["--tasks", "nosuch"], "unknown bench task 'nosuch'"),
    (["--device", "cuda"], "no CUDA device"),
    (["--steps", "0"], "--steps >= 1"),
])
def test_bad_input_is_one_line(args, needle, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    assert main(["bench", "--size", "tiny", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_mae_step_flops_double_with_the_batch():
    counts = []
    for batch in (4, 8):
        torch.manual_seed(0)
        side, cfg, _ = models.build_ours("mae_image", "tiny", CPU, batch_size=batch)
        step = meters.training_step(side, meters.make_optimizer(side.module, CPU, cfg.lr, cfg.weight_decay), CPU)
        counts.append(meters.count_flops(step))
    assert counts[0] > 0
    assert counts[1] == pytest.approx(2 * counts[0], rel=0.01)


def test_cpu_attention_flops_are_counted():
    """Forward: Q K^T and A V; backward: 5 more products of that size (the scores recomputed): 2BhN^2d each."""
    B, h, N, d = 2, 3, 16, 8
    q, k, v = (torch.randn(B, h, N, d, requires_grad=True) for _ in range(3))
    flops = meters.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert flops == 7 * 2 * B * h * N * N * d


def test_missing_peer_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    out = tmp_path / "r.json"
    assert main(["bench", "--tasks", "mae_image", "--size", "tiny", "--steps", "1", "--warmup", "0",
                 "--repeats", "1", "--report", str(out)]) == 0
    row = json.loads(out.read_text())["tasks"]["mae_image"]
    assert row["ratio"] == peers.NOT_INSTALLED and row["samples_per_s"] > 0
