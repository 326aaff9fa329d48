"""``mmssl bench``: training throughput, memory and FLOPs of the tasks beside peer implementations,
the data paths of video, and how fast image tasks learn against a plain training loop.

Model rows (``models.py``): samples/s (median of the repeats), peak memory, the FLOPs of one
training step, the FLOP/s achieved and the utilisation against the matrix-multiply peak measured
in the same run (``meters.py``), beside transformers' ViTMAE / VideoMAE and lightly's NT-Xent
(``peers.py``). Data-path rows (``video.py``): clip reading per video backend and DAVIS-style label
propagation. Learning rows (``learning.py``, ``--tasks learning`` or ``learning:TASK``): kNN top-1
against training seconds for the library and a plain loop. ``report.py`` prints the table.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from mmssl.bench.learning import LEARNING_TASKS, bench_learning, train_device
from mmssl.bench.meters import (  # noqa: F401  (the bench's measuring API)
    PeakMemory,
    count_flops,
    make_optimizer,
    matmul_peak,
    peak_rss_mb,
    resolve_device,
    rss_mb,
    training_step,
)
from mmssl.bench.models import MODEL_TASKS, bench_model, build_ours  # noqa: F401
from mmssl.bench.peers import NO_PEER, NOT_INSTALLED, peer_versions  # noqa: F401
from mmssl.bench.report import format_table
from mmssl.bench.video import bench_clip_loading, bench_tracking
from mmssl.errors import MmsslError
from mmssl.host_memory import keep_freed_memory

TASKS = (*MODEL_TASKS, "clip_loading", "tracking")
SIZES = ("tiny", "small", "full")


def expand_tasks(tasks: list[str] | None) -> list[str]:
    """The rows to run: TASKS by default; ``learning`` stands for ``learning:TASK`` of every image task."""
    out: list[str] = []
    for t in tasks or TASKS:
        if t == "learning":
            out += [f"learning:{name}" for name in LEARNING_TASKS]
        elif t in TASKS or (t.startswith("learning:") and t.split(":", 1)[1] in LEARNING_TASKS):
            out.append(t)
        else:
            known = ", ".join([*TASKS, "learning", *(f"learning:{n}" for n in LEARNING_TASKS)])
            raise MmsslError(f"unknown bench task '{t}'; known: {known}")
    return list(dict.fromkeys(out))


def run(tasks: list[str] | None = None, size: str | None = None, device: str | None = None, steps: int = 2,
        warmup: int = 3, repeats: int = 5, compile: bool = False, seconds: float = 240, dataset: str = "demo",
        points: int = 6, pairs: int = 1, log: Callable[[str], None] = print, overrides: list[str] | None = None,
        mixed_precision: str = "no") -> dict:
    """Every requested measurement; returns the JSON-able report, its printed table under ``"table"``.

    ``size`` None is "full" on a GPU and "small" on a CPU; ``device`` None is cuda where available.
    ``seconds``, ``dataset``, ``points`` and ``pairs`` are the learning rows': training seconds per side,
    an image dataset (demo, or a folder with train/ and test/ class folders), kNN points per curve and
    how many times the two sides run in turn (``bench_learning``); ``overrides`` (KEY=VALUE) change
    the learning rows' tasks, and through them their peers, from the defaults; ``mixed_precision`` (no or
    bf16) is the precision both sides of a learning row train at.
    """
    tasks = expand_tasks(tasks)
    if size is not None and size not in SIZES:
        raise MmsslError(f"--size must be one of {', '.join(SIZES)}, not '{size}'")
    if steps < 1 or repeats < 1 or warmup < 0:
        raise MmsslError(f"need --steps >= 1, --repeats >= 1 and --warmup >= 0; got {steps}, {repeats} and {warmup}")
    if seconds <= 0 or points < 1 or pairs < 1:
        raise MmsslError(f"need --seconds > 0, --points >= 1 and --pairs >= 1; got {seconds}, {points} and {pairs}")
    if dataset != "demo" and not os.path.isdir(dataset):
        raise MmsslError(f"--dataset for the learning rows is demo or a folder with train/ and test/, not '{dataset}'")
    dev = resolve_device(device)
    learning = [t for t in tasks if t.startswith("learning:")]
    if learning and dev != train_device():
        raise MmsslError(f"the learning rows train where run_training does ({train_device()}); "
                         f"--device {device} cannot apply to {learning[0]}")
    size = size or ("full" if dev.type == "cuda" else "small")
    # run_training keeps freed host memory on a CPU (mmssl.host_memory); set here, before anything is
    # timed, every side of every row (library, peers, plain loops, per-item reference) runs with it.
    kept = dev.type == "cpu" and keep_freed_memory()
    allocator = "glibc, freed memory kept (mmssl.host_memory)" if kept else "the system's default"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    report: dict[str, Any] = {
        "device": str(dev), "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "size": size, "host_allocator": allocator, "settings": {"steps": steps, "warmup": warmup, "repeats": repeats, "compile": compile,
                                   "seconds": seconds, "dataset": dataset, "points": points, "pairs": pairs,
                                   "overrides": list(overrides or []), "mixed_precision": mixed_precision},
        "peers": peer_versions(), "memory_kind": PeakMemory(dev).kind, "tasks": {},
    }
    peak = None
    if any(t in MODEL_TASKS for t in tasks):
        peak = matmul_peak(dev)
        log(f"matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} {peak['n']}x{peak['n']})")
    for t in tasks:
        if t in MODEL_TASKS:
            report["tasks"][t] = bench_model(t, size, dev, steps, warmup, repeats, compile, log)
            # The peak is measured again after every model and the best kept: on a machine shared with
            # other work one measurement can fall in a busy moment and make utilisation exceed 100%.
            again = matmul_peak(dev)
            tries = peak["tries"] + again["tries"]
            peak = {**max(peak, again, key=lambda m: m["flops_per_s"]), "tries": tries}
        elif t == "clip_loading":
            report["tasks"][t] = bench_clip_loading(size, repeats, log=log)
        elif t == "tracking":
            report["tasks"][t] = bench_tracking(size, dev, log=log)
        else:
            report["tasks"][t] = bench_learning(t.split(":", 1)[1], size, seconds, dataset, points, log, pairs,
                                               overrides, mixed_precision)
    if peak is not None:
        report["matmul_peak"], report["matmul_peak_flops"] = peak, peak["flops_per_s"]
        for row in report["tasks"].values():
            for figures in (row, row.get("peer"), row.get("compiled")):
                if isinstance(figures, dict) and "flops_per_s" in figures:
                    figures["utilisation"] = figures["flops_per_s"] / peak["flops_per_s"]
    report["table"] = format_table(report)
    return report
