"""Shuffle-BN's groups in one pass against a pass per group: milliseconds per training step of a task's
objective (forward, backward, AdamW, ``after_step``) on views made beforehand, the two ways taken in
turn in one process, so that a drift in the machine's speed reaches both alike.

    python benchmarks/shuffle_bn_speed.py [TASK] [--rounds 20] [--steps 5]

TASK is ``moco_image`` (the default) or ``densecl_image``, at its defaults on the embedded shapes. "one
pass" is the objective as it runs (``mmssl.objectives.batchnorm_groups``); "pass per group" runs the
encoder once per BatchNorm group, the path kept for SyncBatchNorm. Both compute the same numbers
(tests/unit/test_batchnorm_groups.py). Short rounds taken in turn, and the median of each round's ratio,
because a shared machine's speed drifts by more than the difference measured. Run it on an otherwise
idle machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmssl.bench.learning import learning_config, objective_stepper
from mmssl.host_memory import keep_freed_memory
from mmssl.objectives import moco


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", nargs="?", default="moco_image", choices=["moco_image", "densecl_image"])
    p.add_argument("--rounds", type=int, default=20, help="rounds of the two ways, taken in turn")
    p.add_argument("--steps", type=int, default=5, help="timed steps per way and round")
    args = p.parse_args()

    keep_freed_memory()  # the trainer's host allocator on a CPU
    with tempfile.TemporaryDirectory() as tmp:
        task, cfg = learning_config(args.task, "default", "demo", Path(tmp) / "run")
        loader = iter(task.train_loader(dataclasses.replace(cfg, num_workers=0), 0, 1, 0))
        with torch.no_grad():
            batches = [task.on_device(cfg, next(loader)) for _ in range(args.steps)]
        torch.manual_seed(cfg.seed)
        step = objective_stepper(task.build_objective(cfg).train(), cfg)

        ways = {"one pass": moco.groupable, "pass per group": lambda module: False}
        times: dict[str, list[float]] = {name: [] for name in ways}
        try:
            for _ in range(args.rounds):
                for name, groupable in ways.items():
                    moco.groupable = groupable
                    for batch in batches[:2]:  # untimed: the other way's buffers and kernels leave
                        step(batch)
                    start = time.perf_counter()
                    for batch in batches:
                        step(batch)
                    times[name].append(1000 * (time.perf_counter() - start) / len(batches))
        finally:
            moco.groupable = ways["one pass"]

    groups = cfg.batch_size // cfg.objective.shuffle_bn
    print(f"{args.task} on the embedded shapes, batch {cfg.batch_size} x 2 views, BatchNorm groups of "
          f"{cfg.objective.shuffle_bn} ({groups} per view), {torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds of {args.steps} steps")
    for name, ms in times.items():
        print(f"  {name:15s} {statistics.median(ms):7.1f} ms/step   rounds: {', '.join(f'{t:.1f}' for t in ms)}")
    ratios = [b / a for a, b in zip(times["one pass"], times["pass per group"])]
    print(f"  pass per group / one pass: {statistics.median(times['pass per group']) / statistics.median(times['one pass']):.3f} "
          f"(medians); median of the rounds' ratios {statistics.median(ratios):.3f}, "
          f"{sum(r > 1 for r in ratios)} of {len(ratios)} rounds faster in one pass")


if __name__ == "__main__":
    main()
