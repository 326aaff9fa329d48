"""How stale MoCo's queued negatives are in a short run, and what that costs the loss.

Trains the plain MoCo peer (``mmssl/bench/plain_loop.py``, held to the library's objective by tests)
with the task's settings, as ``benchmarks/plain_peer_steps.py`` does, and keeps the key views of the
last ``--window`` steps with the keys that were queued for them. At a few steps it re-encodes those
views with the current key encoder and prints, by the keys' age in steps:

- ``drift``: 1 - cosine between a view's key when it was queued and its key now, both encoded in the
  same BatchNorm groups (without shuffle-BN's permutation, so that only the encoder's change shows);
- ``logit``: the mean similarity of this step's queries to those queued keys (other images' keys at
  age 0), and ``weight``: the mean softmax weight per key in the queries' InfoNCE denominators over the
  window, relative to a key of age 0. A negative that weighs little moves the loss little; a queue whose
  old keys weigh far less than fresh ones holds fewer useful negatives than its length says.

    python benchmarks/moco_queue_age.py FOLDER|demo STEPS [--seed 0] [--window 32] [--at 100 400 ...] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
import torch.nn.functional as F

from mmssl.bench.learning import learning_config, plain_peer
from mmssl.bench.plain_loop import PlainMoCo, load_images, train_plain
from mmssl.config import parse_override


class _Recorder:
    """Wraps a PlainMoCo's forward and after_step to keep each step's key views, queued keys and queries."""

    def __init__(self, model: PlainMoCo, window: int, at: set[int], temperature: float):
        self.model, self.window, self.at, self.temperature = model, window, at, temperature
        self.history: collections.deque = collections.deque(maxlen=window)  # (views, queued keys), newest last
        self.rows: list[str] = []
        forward, after_step = model.forward, model.after_step

        def recording_forward(v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
            self.key_views = [v1, v0] if model.symmetric else [v1]
            self.query_views = [v0, v1] if model.symmetric else [v0]
            return forward(v0, v1)

        def recording_after_step(step: int) -> None:
            queued = torch.cat(model.pending).detach()
            views = torch.cat(self.key_views).detach()
            then = self._keys_now(views)
            after_step(step)
            self.history.append((views, queued, then))
            if step in self.at:
                self.report(step)

        model.forward, model.after_step = recording_forward, recording_after_step

    @torch.no_grad()
    def _keys_now(self, views: torch.Tensor) -> torch.Tensor:
        m = self.model
        parts = views.chunk(len(self.key_views))
        return F.normalize(m.key[1](torch.cat(m.encode(m.key[0], list(parts), False))), dim=1)

    @torch.no_grad()
    def report(self, step: int) -> None:
        m = self.model
        q = F.normalize(m.projector(torch.cat(m.encode(m.encoder, self.query_views, False))), dim=1)
        newest = len(self.history) - 1
        stats = []
        for i, (views, queued, then) in enumerate(self.history):
            age = newest - i
            drift = 1 - (then * self._keys_now(views)).sum(1).mean().item()
            sims = q @ queued.float().T
            if age == 0:  # this step's keys: only other images' keys are negatives
                n = len(q) // len(self.query_views)
                own = torch.arange(len(q), device=q.device)
                sims = sims.masked_fill(own[:, None] % n == own[None, :] % n, float("nan"))
            stats.append((age, drift, sims))
        # Softmax weight per key over the whole window, as one InfoNCE denominator would spread it.
        all_sims = torch.cat([s for _, _, s in stats], dim=1) / self.temperature
        own = all_sims.isnan()
        weights = torch.softmax(all_sims.nan_to_num(float("-inf")), dim=1).masked_fill(own, float("nan"))
        cols = [s.shape[1] for _, _, s in stats]
        per_age = [w.nanmean().item() for w in weights.split(cols, dim=1)]
        fresh, start = per_age[-1], len(self.rows)
        for (age, drift, sims), w in sorted(zip(stats, per_age), key=lambda t: t[0][0]):
            if age in (0, 1, 2, 4, 8, 16, 31) or age == newest:
                self.rows.append(f"  step {step:5d}  age {age:3d}: drift {drift:.3f}  logit {sims.nanmean().item():+.3f}  "
                                 f"weight {w / fresh:.2f}")
        print("\n".join(self.rows[start:]), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="a folder with train/<class>/ and test/<class>/ images, or demo")
    p.add_argument("steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=32, help="steps of keys kept (the demo's queue holds 32)")
    p.add_argument("--at", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1600])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="moco_image settings, as on train.py")
    args = p.parse_intermixed_args()
    overrides = dict(parse_override(o) for o in args.overrides)
    scratch = Path("/nonexistent-output")
    task, cfg = learning_config("moco_image", "default", args.dataset, scratch, **overrides,
                                max_steps=args.steps, seed=args.seed)
    simclr = learning_config("simclr_image", "default", args.dataset, scratch)[1]
    torch.manual_seed(args.seed)
    model, min_scale, _ = plain_peer("moco_image", cfg, simclr, task.encoder_spec(cfg))
    _Recorder(model, args.window, set(args.at), cfg.objective.temperature)
    print(f"moco_image's plain peer on {args.dataset}: queue {cfg.objective.queue_size}, momentum "
          f"{cfg.objective.momentum}, {args.steps} steps of {cfg.batch_size}, seed {args.seed}", flush=True)
    train_plain(model, load_images(args.dataset, cfg.split, cfg.image_size), batch_size=cfg.batch_size, lr=cfg.lr,
                weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, size=cfg.image_size,
                min_scale=min_scale, measure=lambda enc: 0.0, seed=args.seed, at_steps=[args.steps],
                cosine_steps=args.steps, min_lr_ratio=cfg.min_lr_ratio)


if __name__ == "__main__":
    main()
