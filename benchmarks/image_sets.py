"""Write two labelled image folders that the image demos were never tuned on, for checking that
demo defaults transfer beyond the embedded shapes.

  digits: scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes, shipped with the
          package), upsampled to 32 px; a fixed stratified 80/20 train/test split.
  glyphs: 10 letters drawn with Pillow's bundled font at random size, rotation, position and colour
          over a textured background (smooth noise, gradients, stripes) with line distractors;
          400 train and 100 test images per class.

Both are imagefolders (``OUT/<set>/{train,test}/<class>/<n>.png``), so any task reads them with
``--dataset OUT/<set> --label-column label``.

    python benchmarks/image_sets.py OUT [--sets digits glyphs] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LETTERS = "AEGKMRSWXZ"
SIZE = 32


def write(images: list[tuple[np.ndarray, int, str]], root: Path, names: list[str]) -> None:
    counts: dict[tuple[str, int], int] = {}
    for array, label, split in images:
        folder = root / split / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        n = counts[(split, label)] = counts.get((split, label), -1) + 1
        Image.fromarray(array).save(folder / f"{n:05d}.png")


def digits(seed: int) -> list[tuple[np.ndarray, int, str]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    out = []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(data.target == label))
        cut = round(len(rows) * 0.8)
        for k, i in enumerate(rows):
            grey = (data.images[i] * (255 / 16)).astype(np.uint8)
            big = np.asarray(Image.fromarray(grey).resize((SIZE, SIZE), Image.BICUBIC))
            out.append((np.repeat(big[..., None], 3, axis=2), label, "train" if k < cut else "test"))
    return out


def _background(rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE, 3) float in [0, 1]: smooth noise, a gradient or stripes in two random colours."""
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    kind = rng.integers(3)
    if kind == 0:
        grid = rng.uniform(0, 1, (5, 5)).astype(np.float32)
        t = np.asarray(Image.fromarray(grid, mode="F").resize((SIZE, SIZE), Image.BICUBIC)).clip(0, 1)
    elif kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * x + np.sin(angle) * y + 1) / 2
    else:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 6)
        t = (np.sin(2 * np.pi * freq * (np.cos(angle) * x + np.sin(angle) * y)) + 1) / 2
    return a * (1 - t[..., None]) + b * t[..., None]


def glyph(label: int, rng: np.random.Generator) -> np.ndarray:
    back = _background(rng)
    # Draw the letter large, rotate, then shrink: the bundled font hints poorly at 10-20 px.
    big = SIZE * 4
    mask = Image.new("L", (big, big), 0)
    font = ImageFont.load_default(size=int(rng.uniform(0.45, 0.85) * big))
    draw = ImageDraw.Draw(mask)
    draw.text((big / 2, big / 2), LETTERS[label], fill=255, font=font, anchor="mm")
    mask = mask.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR,
                       translate=tuple(rng.uniform(-0.15, 0.15, 2) * big))
    for _ in range(rng.integers(1, 4)):  # thin distractor strokes, drawn in the letter's colour
        p = rng.uniform(0, big, 4)
        ImageDraw.Draw(mask).line(list(p), fill=255, width=int(rng.integers(3, 7)))
    alpha = np.asarray(mask.resize((SIZE, SIZE), Image.BOX), dtype=np.float32)[..., None] / 255
    value = back.mean()
    fore = rng.uniform(0, 1, 3)
    fore = fore * 0.4 + (0.6 if value < 0.5 else 0.0)  # keep the letter visible against the background
    return ((back * (1 - alpha) + fore * alpha) * 255).round().clip(0, 255).astype(np.uint8)


def glyphs(seed: int, train_per_class: int = 400, test_per_class: int = 100) -> list[tuple[np.ndarray, int, str]]:
    out = []
    for label in range(10):
        for k in range(train_per_class + test_per_class):
            rng = np.random.default_rng([seed, label, k])
            out.append((glyph(label, rng), label, "train" if k < train_per_class else "test"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--sets", nargs="+", default=["digits", "glyphs"], choices=["digits", "glyphs"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in args.sets:
        images = digits(args.seed) if name == "digits" else glyphs(args.seed)
        names = [str(d) for d in range(10)] if name == "digits" else list(LETTERS)
        write(images, args.out / name, names)
        print(f"{args.out / name}: {sum(s == 'train' for *_, s in images)} train, "
              f"{sum(s == 'test' for *_, s in images)} test images")


if __name__ == "__main__":
    main()
