"""A procedurally drawn, labelled demo image set (numpy only), for pretraining image encoders and
probing them: the class is a shape, everything else is a nuisance.

Each 32x32 RGB image holds one filled shape (10 classes, CLASSES) drawn with a random
foreground colour (hue, saturation, value), scale (35-80% of the image side for the shape's
bounding circle), tilt (within +-30 degrees by default: shapes are upright, as objects in photos
are, so predicting a 90-degree rotation has an answer) and position (the bounding circle at most
~15% outside),
over a background of a random colour and one of five patterns: flat, linear gradient, soft stripes,
smooth noise or checker. The foreground value is kept 0.3-0.6 away from the background's, in
either direction, so a shape is always visible but its polarity is random. Raw pixels therefore
say little about the class (cosine kNN on the pixels of the 10 classes scores 28% at k = 20, chance
10%), while a representation invariant to colour, position, scale and rotation separates the classes
-- what contrastive and masked-image objectives are meant to learn.

Shape masks are supersampled 4x (coverage = fraction of 16 sub-pixel samples inside) and
composited over the background, so edges are antialiased. Every draw comes from a generator
seeded by (seed, class, index), so an image does not depend on the set size or the order of
generation; the test images of a class follow its training images in index.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

CACHE_VERSION = 2  # bump whenever the generator's output changes
CLASSES: list[str] = ["disk", "ring", "square", "triangle", "star", "plus", "crescent", "arrow", "ell", "heart"]
_SUPERSAMPLE = 4
_BINS = 2048  # angular resolution of the polar boundary tables
_PATTERNS = ("flat", "gradient", "stripes", "noise", "checker")
_SCALE = (0.35, 0.8)  # the shape's bounding circle, as a fraction of the image side
_NOISE_GRID = 6  # the noise texture is a 6x6 random grid, bilinearly upsampled


def _polar_table(vertices: list[tuple[float, float]], centre: tuple[float, float]) -> np.ndarray:
    """Distance from ``centre`` to the polygon's boundary along _BINS rays (angle 2 pi b / _BINS).
    Valid for polygons that are star-shaped about ``centre`` (every ray leaves the shape once)."""
    v = np.asarray(vertices, dtype=np.float64) - centre
    a, b = v, np.roll(v, -1, axis=0)  # edges a -> b, (E, 2)
    th = 2 * np.pi * np.arange(_BINS) / _BINS
    d = np.stack([np.cos(th), np.sin(th)], axis=1)[:, None, :]  # (B, 1, 2) ray directions
    e = (b - a)[None]  # (1, E, 2)
    # Solve t d = a + u e for (t, u) with Cramer's rule; a hit needs t >= 0 and 0 <= u <= 1.
    den = d[..., 0] * -e[..., 1] + d[..., 1] * e[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a[None, :, 0] * -e[..., 1] + a[None, :, 1] * e[..., 0]) / den
        u = (d[..., 0] * a[None, :, 1] - d[..., 1] * a[None, :, 0]) / den
    hit = np.isfinite(t) & (t >= 0) & (u >= -1e-9) & (u <= 1 + 1e-9)
    return np.where(hit, t, 0.0).max(axis=1).astype(np.float32)


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    """Tips at radius 1 alternating with notches at radius ``inner`` (inner = cos(pi/points): a regular polygon)."""
    th = np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return list(zip(r * np.cos(th), r * np.sin(th)))


# Polygon classes in shape coordinates (the shape fits in the unit circle): vertices and a point
# the polygon is star-shaped about (for the plus, arrow and ell: a point in both of their bars).
_POLYGONS = {
    "square": (_star(4, np.cos(np.pi / 4)), (0.0, 0.0)),
    "triangle": (_star(3, np.cos(np.pi / 3)), (0.0, 0.0)),
    "star": (_star(5, 0.42), (0.0, 0.0)),
    "plus": ([(0.25, 0.25), (0.968, 0.25), (0.968, -0.25), (0.25, -0.25), (0.25, -0.968), (-0.25, -0.968),
              (-0.25, -0.25), (-0.968, -0.25), (-0.968, 0.25), (-0.25, 0.25), (-0.25, 0.968), (0.25, 0.968)],
             (0.0, 0.0)),
    "arrow": ([(-0.95, -0.2), (0.1, -0.2), (0.1, -0.6), (1.0, 0.0), (0.1, 0.6), (0.1, 0.2), (-0.95, 0.2)],
              (0.1, 0.0)),
    "ell": ([(-0.55, -0.75), (0.65, -0.75), (0.65, -0.33), (-0.13, -0.33), (-0.13, 0.75), (-0.55, 0.75)],
            (-0.34, -0.54)),
}
_TABLES = {k: (_polar_table(v, c), np.float32(c)) for k, (v, c) in _POLYGONS.items()}


def _inside(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of shape coordinates (x, y) (any shape) that fall inside class ``name``."""
    if name in _TABLES:
        table, (cx, cy) = _TABLES[name]
        dx, dy = x - cx, y - cy
        b = (np.arctan2(dy, dx) * (_BINS / (2 * np.pi))).astype(np.int32) % _BINS
        return dx * dx + dy * dy <= table[b] ** 2
    r2 = x * x + y * y
    if name == "disk":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if name == "crescent":
        return (r2 <= 1.0) & ((x - 0.45) ** 2 + y * y >= 0.8 ** 2)
    if name == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled and shifted into the unit circle
        hx, hy = 1.22 * x, 1.22 * y + 0.12
        q = hx * hx + hy * hy - 1.0
        return q * q * q <= hx * hx * hy * hy * hy
    raise KeyError(name)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each in [0, 1], shape (...)) -> RGB (..., 3) in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _draw_params(seed: int, c: int, i: int, size: int, max_rotation: float) -> dict:
    """All random draws of image i of class c (its own generator: independent of the set size)."""
    r = np.random.default_rng([seed, c, i])
    scale = r.uniform(*_SCALE)
    radius = scale * size / 2
    margin = 0.85 * radius  # the bounding circle may stick out by up to 15% of its radius
    v_fg = r.uniform(0.15, 1.0)
    # Background value 0.3-0.6 brighter or darker than the foreground, whichever fits in [0.05, 1]
    # (a coin flip when both do), so the shape is visible with either polarity.
    gap = r.uniform(0.3, 0.6)
    up, down = v_fg + gap <= 1.0, v_fg - gap >= 0.05
    v_bg = v_fg + gap if up and (not down or r.random() < 0.5) else max(v_fg - gap, 0.05)
    # The pattern's second colour moves away from the foreground value, so the contrast stays.
    v_bg2 = np.clip(v_bg + np.sign(v_bg - v_fg) * r.uniform(0.1, 0.3), 0.0, 1.0)
    h_bg = r.random()
    return {
        "radius": radius, "rot": np.deg2rad(r.uniform(-max_rotation, max_rotation)), "cx": r.uniform(margin, size - margin), "cy": r.uniform(margin, size - margin),
        "fg": (r.random(), r.uniform(0.2, 1.0), v_fg),
        "bg": (h_bg, r.uniform(0.0, 0.9), v_bg), "bg2": ((h_bg + r.uniform(-0.15, 0.15)) % 1.0, r.uniform(0.0, 0.9), v_bg2),
        "pattern": r.integers(len(_PATTERNS)), "angle": r.uniform(0, 2 * np.pi), "period": r.uniform(5, 12),
        "phase": r.uniform(0, 2 * np.pi), "grid": r.random((_NOISE_GRID, _NOISE_GRID)),
        "noise": r.normal(0, 0.015, (size, size, 3)),
    }


def _upsample_matrix(n: int, size: int) -> np.ndarray:
    """(size, n) bilinear interpolation from n grid points spread over the image to size pixels."""
    pos = (np.arange(size) + 0.5) / size * (n - 1)
    lo = np.minimum(pos.astype(int), n - 2)
    m = np.zeros((size, n))
    m[np.arange(size), lo] = 1 - (pos - lo)
    m[np.arange(size), lo + 1] = pos - lo
    return m


def shape_coverage(name: str, p: dict, size: int) -> np.ndarray:
    """The share of each pixel that the shapes of class ``name`` cover, from stacked parameters p
    (arrays of length n) -> (n, size, size) floats in [0, 1]."""
    n, ss = len(p["radius"]), _SUPERSAMPLE
    # Sub-pixel sample positions -> shape coordinates (undo translation, rotation, scale).
    sub = ((np.arange(size * ss) + 0.5) / ss).astype(np.float32)
    px, py = sub[None, None, :] - p["cx"][:, None, None], sub[None, :, None] - p["cy"][:, None, None]
    cos, sin = (np.cos(p["rot"]) / p["radius"])[:, None, None], (np.sin(p["rot"]) / p["radius"])[:, None, None]
    x, y = (cos * px + sin * py).astype(np.float32), (cos * py - sin * px).astype(np.float32)
    return _inside(name, x, y).reshape(n, size, ss, size, ss).mean(axis=(2, 4), dtype=np.float32)


def _render(name: str, p: dict, size: int) -> np.ndarray:
    """A batch of images of class ``name`` from stacked parameters p (arrays of length n) -> (n, size, size, 3) floats."""
    n = len(p["radius"])
    alpha = shape_coverage(name, p, size)[..., None]

    # Background: one weight map w in [0, 1] per pattern, blending colour bg (w = 0) into bg2 (w = 1).
    pix = (np.arange(size) + 0.5) - size / 2
    ux, uy = np.cos(p["angle"])[:, None, None], np.sin(p["angle"])[:, None, None]
    along, across = ux * pix[None, None, :] + uy * pix[None, :, None], ux * pix[None, :, None] - uy * pix[None, None, :]
    wave = 2 * np.pi / p["period"][:, None, None]
    up = _upsample_matrix(_NOISE_GRID, size)
    noise = np.einsum("hi,nij,wj->nhw", up, p["grid"], up)
    noise = (noise - noise.min(axis=(1, 2), keepdims=True)) / np.ptp(noise, axis=(1, 2), keepdims=True).clip(1e-6)
    weights = np.stack([
        np.zeros((n, size, size)),
        np.clip(0.5 + along / size, 0, 1),  # linear gradient across the image
        0.5 + 0.5 * np.clip(3 * np.sin(wave * along + p["phase"][:, None, None]), -1, 1),  # soft-edged stripes
        noise,
        0.5 + 0.5 * np.clip(6 * np.sin(wave * along) * np.sin(wave * across), -1, 1),  # checker (cells = half a period)
    ])
    w = weights[p["pattern"], np.arange(n)][..., None]
    bg = (1 - w) * _hsv_to_rgb(*p["bg"].T)[:, None, None] + w * _hsv_to_rgb(*p["bg2"].T)[:, None, None]
    img = (1 - alpha) * bg + alpha * _hsv_to_rgb(*p["fg"].T)[:, None, None] + p["noise"]
    return img


def generate_shapes(train_per_class: int = 400, test_per_class: int = 100, size: int = 32, seed: int = 0,
                    max_rotation: float = 30.0) -> dict[str, dict]:
    """Returns {"train": split, "test": split}; split = {"image": uint8 (N, size, size, 3) RGB,
    "label": int64 (N,) indices into CLASSES}, class-major (all of class 0, then class 1, ...)."""
    if min(train_per_class, test_per_class) < 0 or size < 8:
        raise ValueError("generate_shapes: bad set size or image size (size must be >= 8)")
    out = {}
    for split, ids in (("train", range(train_per_class)),
                       ("test", range(train_per_class, train_per_class + test_per_class))):
        images = [np.zeros((0, size, size, 3), np.uint8)]
        for c, name in enumerate(CLASSES):
            params = [_draw_params(seed, c, i, size, max_rotation) for i in ids]
            for start in range(0, len(params), 64):  # chunks keep the supersampled arrays small
                chunk = params[start:start + 64]
                stacked = {k: np.array([q[k] for q in chunk]) for k in chunk[0]}
                images.append(np.round(np.clip(_render(name, stacked, size), 0, 1) * 255).astype(np.uint8))
        out[split] = {"image": np.concatenate(images), "label": np.repeat(np.arange(len(CLASSES), dtype=np.int64), len(ids))}
    return out


_GENERATE_SIGNATURE = inspect.signature(generate_shapes)  # to fill in defaults for the cache key


def load_demo_images(cache_dir: str | os.PathLike, **kwargs) -> dict[str, dict]:
    """generate_shapes(**kwargs), cached as one .npz under cache_dir. The file name holds
    CACHE_VERSION and a hash of the full argument set (defaults filled in), so a changed generator
    or changed arguments never reuse a stale file; the write is atomic (temp file + os.replace)."""
    bound = _GENERATE_SIGNATURE.bind(**kwargs)
    bound.apply_defaults()
    key = hashlib.sha1(json.dumps(bound.arguments, sort_keys=True, default=str).encode()).hexdigest()[:10]
    cache = Path(cache_dir)
    path = cache / f"shapes_v{CACHE_VERSION}_{key}.npz"
    try:
        with np.load(path) as z:
            return {s: {"image": z[f"{s}_image"], "label": z[f"{s}_label"]} for s in ("train", "test")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # missing or unreadable: regenerate
    data = generate_shapes(**kwargs)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"{s}_{k}": v for s, split in data.items() for k, v in split.items()})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return data
