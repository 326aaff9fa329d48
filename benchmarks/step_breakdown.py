"""Where a training step's time goes, for an image task at its defaults beside its plain peer
(``mmssl/bench/plain_loop.py``): the parts of one step timed alone, in milliseconds per step of
``batch_size`` images, so that a gap between the two sides of a ``mmssl bench`` learning row can be
traced to a part rather than guessed at.

    python benchmarks/step_breakdown.py TASK [--dataset demo] [--batches 20] [--steps 60]

Rows, each measured over the same ``--batches`` batches held in memory unless named otherwise:
  data, held / decoded: ``task.train_loader`` gathering batches from the training set held in
      memory (``in_memory_mib``, the default where it fits), and decoding item by item with no
      workers (``in_memory_mib=0``: decode, resize, draw each image's view seed, collate);
  library views: ``task.on_device`` (the batch's view parameters drawn from its seeds, crops, colour
      jitter in a per-sample order, grayscale, ...);
  library objective: forward, backward and an AdamW step of the task's objective on views made beforehand;
  library views + objective: the two together, as the trainer runs them;
  trainer: ``mmssl.run.run_training`` for ``--steps`` steps (the first quarter left out), with the
      set held in memory, and decoded in the default two DataLoader workers and in none;
  plain views / plain objective / plain views + objective: the same for the plain peer, its batches
      drawn by indexing the whole set held as one tensor.
Run it on an otherwise idle machine: timings of two jobs sharing the cores spoil each other.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmssl.bench.learning import learning_config, library_rate, objective_stepper, plain_peer
from mmssl.bench.plain_loop import batch_views, load_images, peer_colours, peer_crops, peer_samplers
from mmssl.host_memory import keep_freed_memory


def per_step(fn: Callable[[int], object], n: int, warm: int = 5) -> float:
    """Milliseconds per call of fn(i), i = 0..n-1, after ``warm`` untimed calls (the first steps of a
    model run slower while its buffers are allocated and its kernels chosen)."""
    for i in range(warm):
        fn(i % n)
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("--dataset", default="demo", help="demo, or a folder with train/<class>/ and test/<class>/")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--steps", type=int, default=60, help="steps of each trainer run")
    args = p.parse_args()

    # The trainer rows go through run_training, which keeps freed host memory on a CPU; set before
    # the first row, so that every row, the plain loop's included, runs with the same allocator.
    kept = keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task, cfg = learning_config(args.task, "default", args.dataset, tmp / "run")
        simclr = learning_config("simclr_image", "default", args.dataset, tmp / "unused")[1]
        n, B = args.batches, cfg.batch_size
        rows: list[tuple[str, float]] = []

        decoded = dataclasses.replace(cfg, in_memory_mib=0)
        for name, c in (("data, held in memory", cfg), ("data, decoded in the training process", decoded)):
            loader = iter(task.train_loader(dataclasses.replace(c, num_workers=0), 0, 1, 0))
            raw = [next(loader) for _ in range(n + 1)]
            rows.append((name, per_step(lambda i, it=loader: next(it), n)))
        with torch.no_grad():
            made = [task.on_device(cfg, b) for b in raw]
        rows.append(("library views", per_step(lambda i: task.on_device(cfg, raw[i]), n)))

        torch.manual_seed(cfg.seed)
        library_step = objective_stepper(task.build_objective(cfg).train(), cfg)

        def library_both(i: int) -> None:
            with torch.no_grad():
                batch = task.on_device(cfg, raw[i])
            library_step(batch)

        rows.append(("library objective", per_step(lambda i: library_step(made[i]), n)))
        rows.append(("library views + objective", per_step(library_both, n)))
        for name, c in (("trainer, held in memory", cfg),
                        (f"trainer, decoded in {cfg.num_workers} workers", decoded),
                        ("trainer, decoded in the training process", dataclasses.replace(decoded, num_workers=0))):
            rate = library_rate(task, c, tmp / f"rate{len(rows)}", args.steps)
            rows.append((name, 1000 * B / rate))

        torch.manual_seed(cfg.seed)
        model, min_scale, peer = plain_peer(args.task, cfg, simclr, task.build_objective(cfg).export_encoder().spec)
        images = load_images(args.dataset, cfg.split, cfg.image_size)
        gen = torch.Generator().manual_seed(cfg.seed)
        crops, colours, samplers = peer_crops(model, cfg.image_size, min_scale), peer_colours(model), peer_samplers(model)
        plain_opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr)
        model.train()

        def plain_views(i: int) -> list[torch.Tensor]:
            x = images[torch.randint(len(images), (B,), generator=gen)]
            with torch.no_grad():
                return [batch_views(x, s, lo, gen, colour=c, max_scale=hi, crop=k)
                        for (s, lo, hi), c, k in zip(crops, colours, samplers)]

        def plain_step(views: list[torch.Tensor]) -> None:
            loss = model(*views)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()
            if hasattr(model, "after_step"):
                model.after_step(1)

        fixed = [plain_views(i) for i in range(n)]
        rows.append(("plain views", per_step(plain_views, n)))
        rows.append(("plain objective", per_step(lambda i: plain_step(fixed[i]), n)))
        rows.append(("plain views + objective", per_step(lambda i: plain_step(plain_views(i)), n)))

    print(f"{args.task} on {args.dataset}, batch {B}, {torch.get_num_threads()} threads; peer: {peer}; "
          f"freed host memory {'kept' if kept else 'returned to the system (the default allocator)'}")
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"  {name.ljust(width)}  {ms:7.1f} ms/step  {1000 * B / ms:7.0f} images/s")


if __name__ == "__main__":
    main()
