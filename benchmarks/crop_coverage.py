"""How much of each image's object a task's crops hold, on the sets whose objects are known: the
embedded shapes and the glyphs and clutter of ``image_sets.py``, regenerated with their masks.

A crop-invariance objective can only tie an object's features across two views when both views hold
the object. On the embedded shapes the object fills much of the image; on glyphs and clutter a letter
or digit covers about a tenth of it, and a small crop then often holds background alone, which the
loss must match to the other view by the background's colours and texture.

    python benchmarks/crop_coverage.py TASK [TASK ...] [--sets shapes glyphs clutter] [--images 600]
        [--draws 10] [--config FILE.yaml] [--set KEY=VALUE ...]

For each set and each group of each task's views (its defaults, then ``--config`` and ``--set``), crops
are drawn as the library draws them (``crop_boxes``, the group's scale range and sampler) on the first
``--images`` training images, ``--draws`` crops per image and group; a crop's coverage is the share of
the object's mass (its alpha summed) inside the box. Printed per group: the share of crops holding at
least half of the object and the share holding less than a fifth; for a group of two or more crops,
the share of pairs (its first two crops) that both hold at least half. Seeded: the same figures every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image_sets  # the unseen sets' generators

from mmssl.modalities.vision import synthetic
from mmssl.modalities.vision.augment import TRIES, crop_boxes
from mmssl.run import resolve_config


def shapes_masks(n: int) -> np.ndarray:
    """(n, 32, 32) coverage of the embedded shapes' first training images, the classes in turn."""
    per_class = -(-n // len(synthetic.CLASSES))
    out = []
    for c, name in enumerate(synthetic.CLASSES):
        params = [synthetic._draw_params(0, c, i, 32, 30.0) for i in range(per_class)]
        stacked = {k: np.array([q[k] for q in params]) for k in params[0]}
        out.append(synthetic.shape_coverage(name, stacked, 32))
    return np.stack([out[i % len(out)][i // len(out)] for i in range(n)])


def glyphs_masks(n: int) -> np.ndarray:
    """(n, 32, 32) letter alphas of glyphs' first training images (seed 0), the classes in turn."""
    return np.stack([image_sets.glyph_and_mask(i % 10, np.random.default_rng([0, i % 10, i // 10]))[1]
                     for i in range(n)])


def clutter_masks(n: int) -> np.ndarray:
    """(n, 32, 32) digit alphas of clutter's first render of its training digits (seed 0)."""
    items = list(image_sets._split_digits(0))
    out = []
    for k, (grey, _label, split) in enumerate(items):
        if len(out) == n:
            break
        rng = np.random.default_rng([0, 0, k])
        other = items[int(rng.integers(len(items)))][0]
        if split == "train":
            out.append(image_sets.cluttered_and_mask(grey, other, rng)[1])
    return np.stack(out)


MASKS = {"shapes": shapes_masks, "glyphs": glyphs_masks, "clutter": clutter_masks}


def coverage(masks: torch.Tensor, scale: tuple[float, float], continuous: bool, crops: int,
             generator: torch.Generator) -> torch.Tensor:
    """(N, crops): the share of each image's object mass inside each of ``crops`` crops drawn at ``scale``."""
    n, size = masks.shape[0], masks.shape[-1]
    sides = torch.full((n * crops,), size)
    u = torch.rand(n * crops, 4 * TRIES, generator=generator, dtype=torch.float64)
    boxes = crop_boxes(sides, sides, scale, u, continuous).double().reshape(n, crops, 4)
    # An integral image gives each box's mass; continuous boxes take whole pixels they overlap most.
    integral = torch.nn.functional.pad(masks.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    top, left = boxes[..., 0].round().long(), boxes[..., 1].round().long()
    bottom = (boxes[..., 0] + boxes[..., 2]).round().long().clamp(max=size)
    right = (boxes[..., 1] + boxes[..., 3]).round().long().clamp(max=size)
    rows = torch.arange(n)[:, None]
    inside = (integral[rows, bottom, right] - integral[rows, top, right]
              - integral[rows, bottom, left] + integral[rows, top, left])
    return inside / masks.double().sum((1, 2))[:, None].clamp(min=1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="+", help="image tasks whose views to draw")
    p.add_argument("--sets", nargs="+", default=list(MASKS), choices=list(MASKS))
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--draws", type=int, default=10, help="crops per image and group (times its crop count)")
    p.add_argument("--config", help="a YAML recipe applied to every task")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied to every task")
    args = p.parse_args()
    recipes = {t: resolve_config(t, args.config, {}, args.set)[1].views for t in args.tasks}
    for name in args.sets:
        masks = torch.from_numpy(MASKS[name](args.images))
        area = (masks > 0.5).double().mean().item()
        print(f"{name}: {len(masks)} training images, the object covers {100 * area:.1f}% of an image's pixels")
        for task, views in recipes.items():
            for g, v in enumerate(views):
                gen = torch.Generator().manual_seed(g)
                share = torch.cat([coverage(masks, (v.min_scale, v.max_scale), v.crop == "continuous", v.crops, gen)
                                   for _ in range(args.draws)])
                line = (f"  {task} views.{g} ({v.crops} crops of {v.min_scale:g}-{v.max_scale:g}): "
                        f">= 1/2 of the object {100 * (share >= 0.5).double().mean():.1f}%, "
                        f"< 1/5 {100 * (share < 0.2).double().mean():.1f}%")
                if v.crops >= 2:
                    line += f"; both of a pair >= 1/2 {100 * (share[:, :2] >= 0.5).all(1).double().mean():.1f}%"
                print(line)


if __name__ == "__main__":
    main()
