"""Embedded videos where appearance alone is ambiguous: objects cut from the same procedural photo
as their background (torch only, deterministic).

The embedded demo (``synthetic.py``) paints every object in hues far from the background's, so
copying colour is enough to track it. Here colour says nothing about object or background:

- One procedural "photo" per scene, a seamless texture of band-limited noise (a coarse field that
  picks colours from a palette of a few nearby hues, an oriented grain of 7-14 px that shades
  them, like wood or brushed metal). The background shows it under the camera; every object, and
  1-2 distractors, show other regions of the same photo, turned so that their grain crosses the
  background's (90 +- 14 degrees, then spinning by up to 29 degrees over the clip). Object and
  background share palette, contrast and grain; what differs is the grain's direction, which only
  structure at the scale of a stride-8 feature cell shows, and the distractors share even that.
- Objects bend: a smooth, time-varying displacement field warps each object's outline and its
  texture together (non-rigid motion), on top of a smooth path, scaling and turning.
- Distractors are unlabelled objects of the same kind; objects and distractors keep one random
  depth order, so distractors pass in front of objects and hide them in part or whole.
- The light drifts: an exposure and white balance that change smoothly over the clip, a soft
  light or shadow spot that crosses the scene, and a little sensor noise in every frame.

Scenes come from one of two disjoint seed streams: ``stream="eval"`` makes the DAVIS-layout
evaluation set (``ambiguous_root()``), ``stream="train"`` scenes of the same kind for training
videos, so a model trained on those never sees an evaluation scene. Scene i of a stream depends
only on (i, stream). Rendering reuses the demo's shapes, paths, cameras and colour responses.

Raw Lab pixels track these objects poorly: an 8 x 8 block of grain matches a block of the same
grain at a similar phase, which the background, the distractors and the object itself all offer,
so the top-k vote leaks labels across the object's edge over the clip. A tracker that sees the
grain's direction, the object's outline and its motion can follow it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mmssl.modalities.video import synthetic as base
from mmssl.sources import cache_dir

CACHE_VERSION = 2  # bump whenever the renderer's output or the layout changes
NUM_EVAL = 8  # sequences of the DAVIS-layout evaluation set
TEX = 256  # texture side in texels; one world unit spans TEX_SCALE texels
TEX_SCALE = 96.0  # about one texel per pixel in cam0 (128 px over ~1.4 world units)
# The photo's structure is a grain of one orientation (wood, brushed metal, fabric) with a period
# of 7-14 px: about one period per stride-8 feature cell, so a cell holds structure, not just a
# colour. Structure coarser than a cell (as in version 1: 20-85 px) leaves every cell a flat patch
# of the palette, alike on object and background.
GRAIN_BAND = (18, 36)  # cycles per texture
GRAIN_SPREAD = 0.25  # angular spread of the grain's orientation, radians
MID, FINE = 0.35, 0.03  # contrast of the grain and of an isotropic fine noise, as fractions of the colour
# An object shows its patch of the photo turned so that its grain crosses the background's: 90
# degrees +- TURN, while it spins by at most SPIN over the clip, so the two stay >= 45 degrees apart.
TURN, SPIN = 0.25, 0.5
STREAMS = {"eval": 7331, "train": 4099}  # disjoint seed streams: evaluation set, training videos


def _band_noise(r: np.random.Generator, lo: float, hi: float, beta: float,
                orientation: float | None = None) -> np.ndarray:
    """A seamless (TEX, TEX) noise field with amplitude ~ f^-beta between lo and hi cycles per
    texture, standardised to zero mean and unit variance; with ``orientation`` (radians) only
    waves whose direction lies within about GRAIN_SPREAD of it: a grain."""
    f = np.fft.fftfreq(TEX) * TEX
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = np.where((radius >= lo) & (radius <= hi), np.maximum(radius, 1) ** -beta, 0.0)
    if orientation is not None:
        off = (np.arctan2(f[:, None], f[None, :]) - orientation + np.pi / 2) % np.pi - np.pi / 2  # a wave and its negative alike
        amp = amp * np.exp(-0.5 * (off / GRAIN_SPREAD) ** 2)
    spectrum = amp * np.exp(2j * np.pi * r.random((TEX, TEX)))
    field = np.fft.ifft2(spectrum).real
    return (field - field.mean()) / max(field.std(), 1e-8)


def _photo(r: np.random.Generator) -> torch.Tensor:
    """The scene's photo: RGB float (3, TEX, TEX) in [0, 1], seamless in both directions."""
    coarse = _band_noise(r, 2, 14, 1.0)  # regions of colour, 10-100 px across
    grain = _band_noise(r, *GRAIN_BAND, 0.0, orientation=r.uniform(0, np.pi))  # structure inside them
    fine = _band_noise(r, 30, 100, 0.0)  # a few pixels
    hue0 = r.random()
    n = int(r.integers(3, 5))
    palette = np.stack([base._hsv((hue0 + r.uniform(-0.09, 0.09)) % 1.0, r.uniform(0.25, 0.7), r.uniform(0.35, 0.9))
                        for _ in range(n)])  # (n, 3) nearby hues: colour does not separate regions
    # the coarse field, through a smooth ramp, picks a position along the palette
    pos = np.clip((np.tanh(1.3 * coarse) + 1) / 2 * (n - 1), 0, n - 1 - 1e-6)
    i = np.floor(pos).astype(int)
    w = (pos - i)[..., None]
    colour = (1 - w) * palette[i] + w * palette[i + 1]
    shade = 1 + MID * grain + FINE * fine
    return torch.from_numpy(np.clip(colour * shade[..., None], 0, 1).transpose(2, 0, 1).astype(np.float32))


def _sample(photo: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup with wrap-around: texel coordinates (...) -> RGB (..., 3)."""
    x0, y0 = torch.floor(tx), torch.floor(ty)
    fx, fy = (tx - x0)[..., None], (ty - y0)[..., None]
    x0, y0 = x0.long() % TEX, y0.long() % TEX
    x1, y1 = (x0 + 1) % TEX, (y0 + 1) % TEX
    flat = photo.permute(1, 2, 0).reshape(-1, 3)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat[(y * TEX + x).reshape(-1)].reshape(*y.shape, 3)

    top = (1 - fx) * at(y0, x0) + fx * at(y0, x1)
    bottom = (1 - fx) * at(y1, x0) + fx * at(y1, x1)
    return (1 - fy) * top + fy * bottom


def _draw_scene(seed: int, stream: str) -> dict:
    """Every random choice of scene ``seed`` of ``stream``."""
    r = np.random.default_rng([seed, STREAMS[stream]])
    K, D = int(r.integers(1, 4)), int(r.integers(1, 3))  # labelled objects, distractors
    layers = []
    for k in range(K + D):
        amp, freq = r.uniform(0.06, 0.22, (2, 2)), r.uniform(0.3, 1.0, (2, 2))
        angle = r.uniform(0, 2 * np.pi)
        layers.append({
            "label": k < K, "shape": base.SHAPES[r.integers(len(base.SHAPES))],
            "radius": r.uniform(0.17, 0.27), "aspect": r.uniform(0.75, 1.3),
            "scale_amp": r.uniform(0.1, 0.3), "scale_freq": r.uniform(0.4, 1.2), "scale_phase": r.uniform(0, 2 * np.pi),
            "centre": r.uniform(-0.4, 0.4, 2), "amp": amp, "freq": freq, "phase": r.uniform(0, 2 * np.pi, (2, 2)),
            "angle": angle, "spin": r.uniform(-SPIN, SPIN),
            "lobes": r.uniform(0.08, 0.18, 2), "lobe_phase": r.uniform(0, 2 * np.pi, 2),
            # the patch appears turned by angle(t) - tex_angle: about 90 degrees (or 270) at the start
            "tex_offset": r.uniform(0, TEX, 2),
            "tex_angle": angle - r.choice([1, -1]) * np.pi / 2 + r.uniform(-TURN, TURN),
            # non-rigid: displacement (in object units) of 2 plane waves per axis that travel over time
            "warp": {"dir": base._waves(r, 4, 0.3, 0.7)["dir"], "freq": r.uniform(0.3, 0.7, 4),
                     "amp": r.uniform(0.03, 0.07, 4), "speed": r.uniform(1.0, 2.5, 4) * r.choice([-1, 1], 4),
                     "phase": r.uniform(0, 2 * np.pi, 4)},
        })
    order = r.permutation(K + D)  # depth order, back to front: distractors may pass in front
    light = {"exposure": r.uniform(0.15, 0.3), "exp_freq": r.uniform(0.5, 1.2), "exp_phase": r.uniform(0, 2 * np.pi),
             "balance": r.uniform(-0.12, 0.12, 3), "spot": r.choice([-1, 1]) * r.uniform(0.25, 0.45),
             "spot_from": r.uniform(-0.9, 0.9, 2), "spot_to": r.uniform(-0.9, 0.9, 2), "spot_size": r.uniform(0.3, 0.55),
             "noise": r.uniform(0.01, 0.025)}
    cameras, colour = base._draw_cameras(r, pan=0.15)
    return {"photo": _photo(r), "layers": [layers[i] for i in order], "light": light, "cameras": cameras,
            "cam1_colour": colour, "noise_seed": int(r.integers(2**31))}


def _warp(o: dict, u: torch.Tensor, v: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothly displaced object coordinates: waves 0-1 move u, waves 2-3 move v."""
    w = o["warp"]
    out = [u.clone(), v.clone()]
    for j in range(4):
        dx, dy = w["dir"][j]
        arg = 2 * np.pi * w["freq"][j] * (dx * u + dy * v) + w["speed"][j] * 2 * np.pi * tau + w["phase"][j]
        out[j // 2] = out[j // 2] + w["amp"][j] * torch.sin(arg)
    return out[0], out[1]


def _lighting(light: dict, X: torch.Tensor, Y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Multiplicative light (T, H, W, 3): exposure and white balance drifting over the clip, and a
    soft spot of light (or shadow) crossing the scene in world coordinates."""
    t = tau.float()[:, None, None, None]
    exposure = torch.exp(light["exposure"] * torch.sin(2 * np.pi * light["exp_freq"] * t + light["exp_phase"]))
    balance = 1 + torch.from_numpy(light["balance"]).float() * (2 * t - 1)  # (T, 1, 1, 3)
    a, b = light["spot_from"], light["spot_to"]
    sx, sy = (a[0] + (b[0] - a[0]) * t[..., 0]), (a[1] + (b[1] - a[1]) * t[..., 0])
    spot = 1 + light["spot"] * torch.exp(-((X - sx) ** 2 + (Y - sy) ** 2) / light["spot_size"] ** 2)
    return exposure * balance * spot[..., None]


def _render_view(p: dict, cam: dict, frames: int, size: int, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One camera: RGB float (T, H, W, 3) in [0, 1] and object ids uint8 (T, H, W) (0: background
    and distractors, 1..K: labelled objects in drawing order)."""
    tau = torch.arange(frames, dtype=torch.float64) / frames
    X, Y, px = base._camera_grid(cam, tau, size)
    photo = p["photo"]
    img = _sample(photo, X * TEX_SCALE, Y * TEX_SCALE)
    ids = torch.zeros(X.shape, dtype=torch.uint8)
    label = 0
    for o in p["layers"]:
        u, v, scale, stretch = base._object_coords(o, X, Y, tau)
        u, v = _warp(o, u, v, tau.float()[:, None, None])
        alpha = base._coverage(o, u, v, scale, stretch, px)
        # the object's own patch of the photo, carried by its (warped) coordinates
        ca, sa = math.cos(o["tex_angle"]), math.sin(o["tex_angle"])
        k = o["radius"] * TEX_SCALE
        tx, ty = o["tex_offset"][0] + k * (ca * u - sa * v), o["tex_offset"][1] + k * (sa * u + ca * v)
        img = (1 - alpha) * img + alpha * _sample(photo, tx, ty)
        if o["label"]:
            label += 1
            ids[alpha[..., 0] >= 0.5] = label
        else:
            ids[alpha[..., 0] >= 0.5] = 0
    img = img * _lighting(p["light"], X, Y, tau)
    img = img + p["light"]["noise"] * torch.randn(img.shape, generator=noise)
    return img.clamp(0, 1), ids


def _relabel_visible(masks: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Keep the objects visible in frame 0 (the annotation tracking starts from), renumbered 1..K'
    in order; an object hidden there becomes background, like a distractor."""
    out = torch.zeros_like(masks)
    new = 0
    for k in range(1, int(masks.max()) + 1):
        if int((masks[0] == k).sum()) >= min_pixels:
            new += 1
            out[masks == k] = new
    return out


@base._one_thread()
def render_ambiguous_scene(seed: int, frames: int = base.FRAMES, size: int = base.SIZE, stream: str = "eval",
                           cameras: int = 2) -> dict[str, torch.Tensor]:
    """Render scene ``seed`` of ``stream`` ("eval" or "train").

    Returns:
        {"cam0": uint8 (T, 3, H, W), "cam1" (when cameras == 2): uint8 (T, 3, H, W), "masks": uint8
        (T, H, W) ids of cam0's labelled objects (0 background and distractors, 1..K each object
        visible in frame 0)}, with T = frames and H = W = size.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, not '{stream}'")
    p = _draw_scene(seed, stream)
    noise = torch.Generator().manual_seed(p["noise_seed"])
    cam0, masks = _render_view(p, p["cameras"][0], frames, size, noise)
    out = {"cam0": base._to_uint8(cam0), "masks": _relabel_visible(masks, max(4, size * size // 400))}
    if cameras == 2:
        cam1, _ = _render_view(p, p["cameras"][1], frames, size, noise)
        out["cam1"] = base._to_uint8(base._colour_transform(cam1, p["cam1_colour"]))
    return out


def ambiguous_root() -> Path:
    """The ambiguous DAVIS-layout set, rendered on first use and reused after::

        JPEGImages/480p/ambigNNN/00000.jpg ...   NUM_EVAL sequences of FRAMES frames, SIZE px
        Annotations/480p/ambigNNN/00000.png ...  DAVIS palette PNGs
        ImageSets/2017/val.txt, train.txt        the sequences / empty
    """
    return base.cached(cache_dir() / f"video_demo_ambiguous_v{CACHE_VERSION}", _write_davis)


def _write_davis(root: Path) -> None:
    names = [f"ambig{i:03d}" for i in range(NUM_EVAL)]
    for i, name in enumerate(names):
        scene = render_ambiguous_scene(i, base.FRAMES, base.SIZE, stream="eval", cameras=1)
        base.write_davis_sequence(root, name, scene["cam0"], scene["masks"])
    base.write_davis_sets(root, names)
