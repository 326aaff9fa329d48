"""Seconds per interval of training steps, for a library run of an image task and for its plain peer
(``mmssl/bench/plain_loop.py``), taken in turn in one process as ``mmssl bench`` takes them: does
either side pay for starting up, and are the two level once running?

The library's intervals come from its metrics.jsonl (``wall_s`` of a log row every ``--every``
steps, no monitor); the plain loop's from its training clock at the same steps (its measurement is a
no-op). A warm-up run of the library (as the bench's) comes first, so neither side starts cold.

    python benchmarks/interval_times.py TASK [--steps 300] [--every 10] [--runs 2] [--dataset demo]

Prints, per run and side, the first five intervals, the median of the rest and the total.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from mmssl.bench.learning import learning_config, library_rate, metric_rows, plain_peer, quietly
from mmssl.bench.plain_loop import load_images, train_plain


def intervals(ends: list[float]) -> list[float]:
    """Cumulative seconds at each logged step -> seconds of each interval."""
    return [round(b - a, 3) for a, b in zip([0.0, *ends], ends)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("--dataset", default="demo", help="demo, or a folder with train/<class>/ and test/<class>/")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--runs", type=int, default=2, help="library, plain, library, plain, ... from seeds 0, 1, ...")
    args = p.parse_args()
    if args.steps < 6 * args.every:
        p.error("--steps must cover at least six intervals of --every")

    from mmssl.run import run_training

    tmp = Path(tempfile.mkdtemp())
    task, cfg = learning_config(args.task, "default", args.dataset, tmp / "run", max_steps=args.steps,
                                log_every=args.every, monitor_every=0, save_every=args.steps)
    simclr = learning_config("simclr_image", "default", args.dataset, tmp / "unused")[1]
    spec = task.build_objective(cfg).export_encoder().spec
    print(f"{args.task}: warm-up run at {library_rate(task, cfg, tmp / 'rate', 20):.0f} images/s")
    images = load_images(args.dataset, cfg.split, cfg.image_size)

    def library(seed: int) -> list[float]:
        c = dataclasses.replace(cfg, output_dir=str(tmp / f"lib{seed}"), seed=seed)
        quietly(lambda: run_training(task, c))
        return intervals([r["wall_s"] for r in metric_rows(Path(c.output_dir)) if "loss" in r])

    def plain(seed: int) -> list[float]:
        torch.manual_seed(seed)
        model, min_scale, _ = plain_peer(args.task, cfg, simclr, spec)
        out = train_plain(model, images, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          warmup_steps=cfg.warmup_steps, size=cfg.image_size, min_scale=min_scale,
                          at_steps=list(range(args.every, args.steps + 1, args.every)), measure=lambda enc: 0.0,
                          seed=seed, cosine_steps=args.steps, min_lr_ratio=cfg.min_lr_ratio)
        return intervals([q["at_s"] for q in out["points"]])

    for seed in range(args.runs):
        for name, side in (("mmssl", library), ("plain", plain)):
            d = side(seed)
            print(f"{name}, seed {seed}: seconds per {args.every} steps, first five {d[:5]}, "
                  f"median of the rest {statistics.median(d[5:]):.3f}; total {sum(d):.2f} s")


if __name__ == "__main__":
    main()
