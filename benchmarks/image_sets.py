"""Write labelled image folders that the image demos were never tuned on, for checking that
demo defaults transfer beyond the embedded shapes.

  digits: scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes, shipped with the
          package), upsampled to 32 px; a fixed stratified 80/20 train/test split.
  glyphs: 10 letters drawn with Pillow's bundled font at random size, rotation, position and colour
          over a textured background (smooth noise, gradients, stripes) with line distractors;
          400 train and 100 test images per class.
  clutter: the same handwritten digits, each shrunk or grown to 12-26 px, placed at a random spot and
          angle in colour over the textured backgrounds, with a second digit's fragment cut at the
          border as a distractor; test images come from held-out writers' digits (the 80/20 split
          above), train and test rendered 3 times each with fresh placements.
          Raw pixels sit near the ceiling on ``digits`` (centred, upright, white on black), so kNN
          there cannot show what a method learned; ``clutter`` keeps the handwriting and removes
          the alignment that pixels exploit.

Each set is an imagefolder (``OUT/<set>/{train,test}/<class>/<n>.png``), so any task reads them with
``--dataset OUT/<set> --label-column label``.

    python benchmarks/image_sets.py OUT [--sets glyphs clutter digits] [--seed 0]

``--sets clutter --clutter-background flat`` (or ``grey``) writes ``clutter_flat`` (``clutter_grey``):
the same digits, placements and fragments over each texture's mean colour (over uniform grey), to
tell what in the background a method follows.
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
    out = []
    for grey, label, split in _split_digits(seed):
        big = np.asarray(Image.fromarray(grey).resize((SIZE, SIZE), Image.BICUBIC))
        out.append((np.repeat(big[..., None], 3, axis=2), label, split))
    return out


def _split_digits(seed: int):
    """scikit-learn's digits as (grey 0-255 array, label, split) with a stratified 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(data.target == label))
        cut = round(len(rows) * 0.8)
        for k, i in enumerate(rows):
            yield (data.images[i] * (255 / 16)).astype(np.uint8), label, "train" if k < cut else "test"


BACKGROUND_KINDS = ("noise", "gradient", "stripes")


def background_draws(rng: np.random.Generator) -> dict:
    """A background's random choices, in the order the sets draw them: two colours, the kind (an index
    of BACKGROUND_KINDS), then the noise's 5 x 5 grid, the gradient's angle in [0, 2 pi), or the
    stripes' angle in [0, pi) and frequency."""
    d = {"a": rng.uniform(0, 1, 3), "b": rng.uniform(0, 1, 3), "kind": int(rng.integers(3))}
    if d["kind"] == 0:
        d["grid"] = rng.uniform(0, 1, (5, 5)).astype(np.float32)
    elif d["kind"] == 1:
        d["angle"] = rng.uniform(0, 2 * np.pi)
    else:
        d["angle"], d["freq"] = rng.uniform(0, np.pi), rng.uniform(2, 6)
    return d


def paint_background(d: dict) -> np.ndarray:
    """(SIZE, SIZE, 3) float in [0, 1]: the background ``background_draws`` chose."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    if d["kind"] == 0:
        t = np.asarray(Image.fromarray(d["grid"], mode="F").resize((SIZE, SIZE), Image.BICUBIC)).clip(0, 1)
    elif d["kind"] == 1:
        t = (np.cos(d["angle"]) * x + np.sin(d["angle"]) * y + 1) / 2
    else:
        t = (np.sin(2 * np.pi * d["freq"] * (np.cos(d["angle"]) * x + np.sin(d["angle"]) * y)) + 1) / 2
    return d["a"] * (1 - t[..., None]) + d["b"] * t[..., None]


def _background(rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE, 3) float in [0, 1]: smooth noise, a gradient or stripes in two random colours."""
    return paint_background(background_draws(rng))


def glyph(label: int, rng: np.random.Generator) -> np.ndarray:
    return glyph_and_mask(label, rng)[0]


def glyph_and_mask(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A glyph image and its letter's (SIZE, SIZE) alpha in [0, 1], distractor strokes included
    (they are drawn into the letter's mask)."""
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
    return ((back * (1 - alpha) + fore * alpha) * 255).round().clip(0, 255).astype(np.uint8), alpha[..., 0]


def _place(grey: np.ndarray, rng: np.random.Generator, side: int, centre: tuple[float, float]) -> np.ndarray:
    """(SIZE, SIZE) float alpha: an 8x8 grey digit grown to ``side`` px, rotated, centred at ``centre``."""
    digit = Image.fromarray(grey).resize((side, side), Image.BICUBIC).rotate(
        rng.uniform(-20, 20), resample=Image.BILINEAR, expand=True)
    canvas = Image.new("L", (3 * SIZE, 3 * SIZE), 0)
    x, y = (round(SIZE + c - d / 2) for c, d in zip(centre, digit.size))
    canvas.paste(digit, (x, y))
    return np.asarray(canvas.crop((SIZE, SIZE, 2 * SIZE, 2 * SIZE)), dtype=np.float32) / 255


def cluttered(grey: np.ndarray, other: np.ndarray, rng: np.random.Generator, background: str = "texture") -> np.ndarray:
    return cluttered_and_mask(grey, other, rng, background)[0]


def cluttered_and_mask(grey: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                       background: str = "texture") -> tuple[np.ndarray, np.ndarray]:
    """A clutter image and its digit's (SIZE, SIZE) alpha in [0, 1] (the border fragment left out)."""
    back = _background(rng)  # drawn whatever the background, so that every variant places the same digits
    if background == "flat":  # the texture's mean colour, no texture
        back = np.broadcast_to(back.reshape(-1, 3).mean(0), back.shape).copy()
    elif background == "grey":
        back = np.full_like(back, 0.5)
    side = int(rng.integers(12, 27))
    margin = side / 2 - 2
    centre = (rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin))
    alpha = digit = _place(grey, rng, side, centre)
    # A fragment of another digit, centred beyond one border so that only part of it shows.
    edge, along = rng.integers(4), rng.uniform(0, SIZE)
    spot = [(along, -4.0), (along, SIZE + 4.0), (-4.0, along), (SIZE + 4.0, along)][edge]
    alpha = np.maximum(alpha, _place(other, rng, int(rng.integers(14, 27)), spot))[..., None]
    fore = rng.uniform(0, 1, 3) * 0.4 + (0.6 if back.mean() < 0.5 else 0.0)
    return ((back * (1 - alpha) + fore * alpha) * 255).round().clip(0, 255).astype(np.uint8), digit


def clutter(seed: int, renders: int = 3, background: str = "texture") -> list[tuple[np.ndarray, int, str]]:
    items = list(_split_digits(seed))
    out = []
    for r in range(renders):
        for n, (grey, label, split) in enumerate(items):
            rng = np.random.default_rng([seed, r, n])
            other = items[int(rng.integers(len(items)))][0]
            out.append((cluttered(grey, other, rng, background), label, split))
    return out


def glyphs(seed: int, train_per_class: int = 400, test_per_class: int = 100) -> list[tuple[np.ndarray, int, str]]:
    out = []
    for label in range(10):
        for k in range(train_per_class + test_per_class):
            rng = np.random.default_rng([seed, label, k])
            out.append((glyph(label, rng), label, "train" if k < train_per_class else "test"))
    return out


SETS = {"glyphs": glyphs, "clutter": clutter, "digits": digits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--sets", nargs="+", default=["glyphs", "clutter"], choices=list(SETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clutter-background", choices=["texture", "flat", "grey"], default="texture",
                   help="clutter's backgrounds: textured (the set), flat (each texture's mean colour) or "
                        "uniform grey, with the same digits and placements; the last two go to clutter_flat "
                        "and clutter_grey")
    args = p.parse_args()
    for name in args.sets:
        folder = name
        if name == "clutter" and args.clutter_background != "texture":
            images, folder = clutter(args.seed, background=args.clutter_background), f"clutter_{args.clutter_background}"
        else:
            images = SETS[name](args.seed)
        names = list(LETTERS) if name == "glyphs" else [str(d) for d in range(10)]
        write(images, args.out / folder, names)
        print(f"{args.out / folder}: {sum(s == 'train' for *_, s in images)} train, "
              f"{sum(s == 'test' for *_, s in images)} test images")


if __name__ == "__main__":
    main()
