"""Train an image task's plain peer (``mmssl/bench/plain_loop.py``) for a given number of steps and
measure it as a library run of the task is measured: the task's online monitor (kNN k = 20 on the
monitor subsets, as ``monitor/knn_top1`` in a run's metrics.jsonl) at evenly spaced steps, then the
task's evaluation (the probe table ``train.py`` prints). This tells a property of a method from a
property of the library: ``mmssl bench`` compares the two against the clock on one set, this compares
them step for step on any labelled folder.

The peer gets the task's objective settings, encoder, batch size, rate, weight decay, warm-up and
crop scale, as in the bench; its rate follows the task's warm-up and cosine schedule (as the
library's run does), or stays constant after the warm-up with ``--constant-lr`` (as the bench's
plain loop does).

    python benchmarks/plain_peer_steps.py TASK FOLDER STEPS [--points 4] [--seed 0] [--constant-lr] [KEY=VALUE ...]

KEY=VALUE settings change the task's config as on ``train.py``'s command line (``views.0.hue=0``), for
the peer and the evaluation alike.

Compare with ``python train.py --task TASK --dataset FOLDER --label-column label max_steps=STEPS
monitor_every=STEPS/points`` (``--dataset demo`` without ``--label-column`` for the embedded shapes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmssl.bench.learning import learning_config, plain_peer
from mmssl.bench.plain_loop import load_images, train_plain
from mmssl.config import parse_override


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("dataset", help="a folder with train/<class>/ and test/<class>/ images, or demo")
    p.add_argument("steps", type=int)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--constant-lr", action="store_true", help="no cosine decay after the warm-up")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="task settings, as on train.py's command line")
    args = p.parse_intermixed_args()
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"settings are KEY=VALUE, not {bad[0]!r}")
    overrides = dict(parse_override(o) for o in args.overrides)

    scratch = Path("/nonexistent-output")  # nothing is written: the configs only name the data
    task, cfg = learning_config(args.task, "default", args.dataset, scratch, **overrides, max_steps=args.steps,
                                seed=args.seed)
    simclr = learning_config("simclr_image", "default", args.dataset, scratch)[1]
    torch.manual_seed(args.seed)  # the peer's initial weights
    model, min_scale, name = plain_peer(args.task, cfg, simclr, task.encoder_spec(cfg))

    def measure(encoder: torch.nn.Module) -> float:
        return task.monitor(cfg, encoder)["knn_top1"]

    print(f"{args.task} on {args.dataset}: {name}; batch {cfg.batch_size}, lr {cfg.lr}, "
          f"{'constant' if args.constant_lr else 'cosine'} rate after {cfg.warmup_steps} warm-up steps, "
          f"seed {args.seed}", flush=True)
    every = max(1, args.steps // args.points)
    out = train_plain(model, load_images(args.dataset, cfg.split, cfg.image_size), batch_size=cfg.batch_size,
                      lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, size=cfg.image_size,
                      min_scale=min_scale, measure=measure, seed=args.seed,
                      at_steps=sorted({*range(every, args.steps + 1, every), args.steps}),
                      cosine_steps=0 if args.constant_lr else args.steps, min_lr_ratio=cfg.min_lr_ratio)
    for point in out["points"]:
        print(f"  step {point['step']}: monitor kNN {100 * point['knn_top1']:.1f} ({point['at_s']:.0f} s of training)")
    print(task.evaluate(cfg, model.encoder)["table"])


if __name__ == "__main__":
    main()
