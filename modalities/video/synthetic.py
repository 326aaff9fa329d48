"""The embedded video demo: textured objects moving over a textured background, seen by two
synchronised cameras, with exact object masks (torch only, deterministic).

A scene lives in a world plane (coordinates about [-1, 1]^2). It holds 1-3 objects (disc,
square, triangle or blob), each filled with its own texture (stripes, checks, dots or smooth
noise) in two saturated colours. The objects' hues are spread around the colour wheel away from
the background's hue, so colour says which object a pixel belongs to, what a colorization
objective learns from. Each object follows a smooth path (two low-frequency sinusoids per axis),
grows and shrinks, and turns slowly; objects keep a fixed depth order, so a later object passes
in front of an earlier one. In most scenes with several objects one of them wanders out of the
first camera's view and comes back. The background is a smooth colour gradient under a
low-contrast texture.

Two cameras watch the same world at the same instants: cam0 is a wide view, cam1 another crop
with its own zoom, roll, slow pan and colour response (channel gains, a hue rotation, contrast).
Shapes are drawn from signed distances, so edges are antialiased without supersampling; the
masks (object id 1..K, 0 for background) label each cam0 pixel with the front-most object that
covers at least half of it.

``demo_root()`` renders NUM_TRAIN + NUM_TEST scenes once into the cache (videos of both cameras,
and a DAVIS-2017 layout root of the test scenes' cam0 frames and masks) and reuses them after.
Scene i is drawn from its own generator seeded with i, so it does not depend on how many
scenes are made or in which order.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mmssl.sources import cache_dir

CACHE_VERSION = 1  # bump whenever the renderer's output or the demo layout changes
NUM_TRAIN, NUM_TEST = 48, 8  # scenes per split; test scenes also make the DAVIS-layout root
FRAMES, SIZE, FPS = 40, 128, 10  # frames per video, frame side in pixels, frames per second
MAX_OBJECTS = 3
SHAPES = ("disc", "square", "triangle", "blob")
TEXTURES = ("stripes", "checks", "dots", "noise")
JPEG_QUALITY = 95


def scene_name(i: int) -> str:
    return f"scene{i:03d}"


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (each in [0, 1]) -> RGB (3,) in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _hsv_map(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-pixel HSV (...) -> RGB (..., 3), all in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * torch.minimum(k, 4 - k).clamp(0, 1)


def _unit(r: np.random.Generator) -> np.ndarray:
    a = r.uniform(0, 2 * np.pi)
    return np.array([np.cos(a), np.sin(a)])


def _waves(r: np.random.Generator, n: int, lo: float, hi: float) -> dict:
    """n plane waves: directions (n, 2), frequencies in cycles per unit (n,), phases (n,)."""
    angle = r.uniform(0, 2 * np.pi, n)
    return {"dir": np.stack([np.cos(angle), np.sin(angle)], 1), "freq": r.uniform(lo, hi, n),
            "phase": r.uniform(0, 2 * np.pi, n)}


def _draw_scene(seed: int) -> dict:
    """Every random choice of scene ``seed``."""
    r = np.random.default_rng([seed, 2024])
    h_bg = r.random()
    background = {"hue": h_bg, "hue_slope": 0.07 * _unit(r), "sat": r.uniform(0.3, 0.5), "val": r.uniform(0.45, 0.65),
                  "val_slope": 0.12 * _unit(r), "texture": _waves(r, 3, 2.0, 6.0), "texture_amp": r.uniform(0.05, 0.1)}
    K = int(r.integers(1, MAX_OBJECTS + 1))
    # One hue per object, each in its own slice of [0.2, 0.8] turns away from the background's.
    offsets = 0.2 + 0.6 * (np.arange(K) + r.uniform(0.15, 0.85, K)) / K
    hues = (h_bg + r.permutation(offsets)) % 1.0
    wanderer = int(r.integers(K)) if K > 1 and r.random() < 0.7 else -1
    objects = []
    for k in range(K):
        amp, freq = r.uniform(0.08, 0.25, (2, 2)), r.uniform(0.3, 1.0, (2, 2))  # (harmonic, axis)
        centre = r.uniform(-0.35, 0.35, 2)
        if k == wanderer:  # a wide sweep along one axis: out of cam0's view (half-width < 0.8) and back
            axis = int(r.integers(2))
            amp[0, axis], freq[0, axis], centre[axis] = r.uniform(1.0, 1.2), r.uniform(0.6, 0.9), r.uniform(-0.1, 0.1)
        h = hues[k]
        objects.append({
            "shape": SHAPES[r.integers(len(SHAPES))], "texture": TEXTURES[r.integers(len(TEXTURES))],
            "radius": r.uniform(0.17, 0.28), "aspect": r.uniform(0.75, 1.3),
            "scale_amp": r.uniform(0.15, 0.35), "scale_freq": r.uniform(0.4, 1.2), "scale_phase": r.uniform(0, 2 * np.pi),
            "centre": centre, "amp": amp, "freq": freq, "phase": r.uniform(0, 2 * np.pi, (2, 2)),
            "angle": r.uniform(0, 2 * np.pi), "spin": r.uniform(-1.5, 1.5),  # radians over the clip
            "lobes": r.uniform(0.08, 0.18, 2), "lobe_phase": r.uniform(0, 2 * np.pi, 2),  # blob outline
            "tex_freq": r.uniform(1.5, 2.5), "tex_angle": r.uniform(0, np.pi), "tex_waves": _waves(r, 4, 1.0, 2.5),
            "colour": _hsv(h, r.uniform(0.85, 1.0), r.uniform(0.85, 1.0)),
            "colour2": _hsv((h + r.uniform(-0.06, 0.06)) % 1.0, r.uniform(0.7, 1.0), r.uniform(0.3, 0.55)),
        })
    cameras, colour = _draw_cameras(r, pan=0.1)
    return {"background": background, "objects": objects, "cameras": cameras, "cam1_colour": colour}


def _draw_cameras(r: np.random.Generator, pan: float) -> tuple[list[dict], dict]:
    """The two cameras (cam0 wide and upright, panning up to ``pan`` per axis over the clip; cam1
    another crop with its own zoom and roll) and cam1's colour response."""
    cameras = [
        {"centre": r.uniform(-0.1, 0.1, 2), "pan": r.uniform(-pan, pan, 2), "half": r.uniform(0.65, 0.75), "roll": 0.0},
        {"centre": r.uniform(-0.25, 0.25, 2), "pan": r.uniform(-0.15, 0.15, 2), "half": r.uniform(0.45, 0.8),
         "roll": r.uniform(-0.2, 0.2)},
    ]
    colour = {"gain": r.uniform(0.85, 1.15, 3), "hue": r.choice([-1, 1]) * r.uniform(0.03, 0.08),
              "contrast": r.uniform(0.8, 1.2), "offset": r.uniform(-0.05, 0.05)}
    return cameras, colour


def _sdf(shape: str, u: torch.Tensor, v: torch.Tensor, o: dict) -> torch.Tensor:
    """Signed distance (negative inside) to a shape of circumradius ~1, in its own coordinates.
    Exact for the disc and square; a close bound for the triangle and blob, enough for antialiasing."""
    if shape == "disc":
        return torch.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        dx, dy = u.abs() - 0.8, v.abs() - 0.8
        return torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2) + torch.maximum(dx, dy).clamp(max=0)
    if shape == "triangle":  # equilateral, inradius 0.5: the largest distance past one of its three edges
        edges = [math.cos(a) * u + math.sin(a) * v for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)]
        return torch.stack(edges).amax(0) - 0.5
    if shape == "blob":  # a circle whose radius wobbles with the angle (3 and 5 lobes)
        theta = torch.atan2(v, u)
        (a3, a5), (p3, p5) = o["lobes"], o["lobe_phase"]
        rim = 0.9 + a3 * torch.sin(3 * theta + p3) + a5 * torch.sin(5 * theta + p5)
        return 0.8 * (torch.sqrt(u * u + v * v) - rim)
    raise KeyError(shape)


def _wave_sum(x: torch.Tensor, y: torch.Tensor, w: dict, scale: float = 1.0) -> torch.Tensor:
    """Mean of plane waves at (x, y): smooth noise in about [-1, 1]."""
    out = torch.zeros_like(x)
    for (dx, dy), f, ph in zip(w["dir"], w["freq"] * scale, w["phase"]):
        out += torch.sin(2 * np.pi * f * (dx * x + dy * y) + ph)
    return out * (1.6 / len(w["freq"]))


def _texture(o: dict, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Weight of the object's second colour, in [0, 1], from its own coordinates (so it moves with it)."""
    f = o["tex_freq"]
    a, b = math.cos(o["tex_angle"]), math.sin(o["tex_angle"])
    along, across = a * u + b * v, -b * u + a * v
    if o["texture"] == "stripes":
        return (0.5 + 1.5 * torch.sin(2 * np.pi * f * along)).clamp(0, 1)
    if o["texture"] == "checks":
        return (0.5 + 4 * torch.sin(np.pi * f * along) * torch.sin(np.pi * f * across)).clamp(0, 1)
    if o["texture"] == "dots":
        du, dv = f * along - torch.round(f * along), f * across - torch.round(f * across)
        return ((0.3 - torch.sqrt(du * du + dv * dv)) * 12 + 0.5).clamp(0, 1)
    return (0.5 + 0.8 * _wave_sum(u, v, o["tex_waves"], f)).clamp(0, 1)


def _camera_grid(cam: dict, tau: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """World coordinates of every pixel centre: X, Y (T, H, W), and the pixel size in world units."""
    px = 2 * cam["half"] / size
    offs = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) * px
    oy, ox = offs[:, None].expand(size, size), offs[None, :].expand(size, size)
    c, s = math.cos(cam["roll"]), math.sin(cam["roll"])
    cx = torch.from_numpy(cam["centre"][0] + cam["pan"][0] * (tau.numpy() - 0.5)).float()[:, None, None]
    cy = torch.from_numpy(cam["centre"][1] + cam["pan"][1] * (tau.numpy() - 0.5)).float()[:, None, None]
    return cx + c * ox - s * oy, cy + s * ox + c * oy, px


def _object_pose(o: dict, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y, scale and angle at each time tau in [0, 1) (each (T,))."""
    # (harmonic, T, axis): each axis is a sum of two sinusoids
    wave = o["amp"][:, None] * np.sin(2 * np.pi * o["freq"][:, None] * tau[None, :, None] + o["phase"][:, None])
    centre = o["centre"][None] + wave.sum(0)  # (T, 2)
    scale = o["radius"] * np.exp(o["scale_amp"] * np.sin(2 * np.pi * o["scale_freq"] * tau + o["scale_phase"]))
    return centre[:, 0], centre[:, 1], scale, o["angle"] + o["spin"] * tau


def _per_frame(a: np.ndarray) -> torch.Tensor:
    """(T,) -> float32 (T, 1, 1), to broadcast over a frame's pixels."""
    return torch.from_numpy(np.asarray(a, dtype=np.float32))[:, None, None]


def _object_coords(o: dict, X: torch.Tensor, Y: torch.Tensor,
                   tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """World coordinates X, Y (T, H, W) -> the object's own u, v (T, H, W), moved, turned and
    stretched along its path at times tau (T,), with its scale (T, 1, 1) and stretch."""
    cx, cy, scale, angle = (_per_frame(a) for a in _object_pose(o, tau.numpy()))
    dx, dy = X - cx, Y - cy
    c, s = torch.cos(angle), torch.sin(angle)
    stretch = math.sqrt(o["aspect"])
    return (c * dx + s * dy) / (scale * stretch), (c * dy - s * dx) * stretch / scale, scale, stretch


def _coverage(o: dict, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, stretch: float,
              px: float) -> torch.Tensor:
    """How much of each pixel the object covers, (T, H, W, 1) in [0, 1]: an antialiased edge one
    pixel wide."""
    # signed distance in pixels (scaled by the narrower axis: a slight overestimate of the blur)
    dist = _sdf(o["shape"], u, v, o) * scale * min(stretch, 1 / stretch) / px
    return (0.5 - dist).clamp(0, 1)[..., None]


def _render_view(p: dict, cam: dict, frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One camera: RGB float (T, H, W, 3) in [0, 1] and object ids uint8 (T, H, W)."""
    tau = torch.arange(frames, dtype=torch.float64) / frames
    X, Y, px = _camera_grid(cam, tau, size)
    bg = p["background"]
    tex = _wave_sum(X, Y, bg["texture"])
    hue = (bg["hue"] + bg["hue_slope"][0] * X + bg["hue_slope"][1] * Y) % 1.0
    val = (bg["val"] + bg["val_slope"][0] * X + bg["val_slope"][1] * Y + bg["texture_amp"] * tex).clamp(0, 1)
    sat = (bg["sat"] + 0.5 * bg["texture_amp"] * tex).clamp(0, 1)
    img = _hsv_map(hue, sat, val)
    ids = torch.zeros(X.shape, dtype=torch.uint8)
    for k, o in enumerate(p["objects"]):  # back to front: a later object covers an earlier one
        u, v, scale, stretch = _object_coords(o, X, Y, tau)
        alpha = _coverage(o, u, v, scale, stretch, px)
        w = _texture(o, u, v)[..., None]
        colour = (1 - w) * torch.from_numpy(o["colour"]).float() + w * torch.from_numpy(o["colour2"]).float()
        img = (1 - alpha) * img + alpha * colour
        ids[alpha[..., 0] >= 0.5] = k + 1
    return img, ids


def _colour_transform(img: torch.Tensor, c: dict) -> torch.Tensor:
    """A camera's colour response on RGB (..., 3): hue rotation about the grey axis, contrast about
    mid-grey, per-channel gain and an offset."""
    theta = 2 * np.pi * c["hue"]
    k = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(k, k)  # Rodrigues
    m = torch.from_numpy(c["gain"][:, None] * c["contrast"] * rot).float()
    return ((img - 0.5) @ m.T + 0.5 * torch.from_numpy(c["gain"]).float() + c["offset"]).clamp(0, 1)


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    """float (T, H, W, 3) in [0, 1] -> uint8 (T, 3, H, W)."""
    return (img * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()


@contextlib.contextmanager
def _one_thread():
    """Rendering is many small elementwise ops: torch's intra-op threads gain nothing there, and
    while other processes keep the cores busy their spin-waiting made it ~50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_thread()
def render_scene(seed: int, frames: int = FRAMES, size: int = SIZE) -> dict[str, torch.Tensor]:
    """Render scene ``seed`` from both cameras.

    Returns:
        {"cam0": uint8 (T, 3, H, W), "cam1": uint8 (T, 3, H, W), "masks": uint8 (T, H, W) object ids
        of cam0 (0 background, 1..K front-most object)}, with T = frames and H = W = size.
    """
    p = _draw_scene(seed)
    cam0, masks = _render_view(p, p["cameras"][0], frames, size)
    cam1, _ = _render_view(p, p["cameras"][1], frames, size)
    return {"cam0": _to_uint8(cam0), "cam1": _to_uint8(_colour_transform(cam1, p["cam1_colour"])), "masks": masks}


def demo_root() -> Path:
    """The demo's folder, rendered on first use (10-30 s on two busy cores, 8 MB) and reused after.

    Layout::

        videos/{train,test}/sceneNNN/cam0.mp4, cam1.mp4    (FRAMES frames of SIZE x SIZE at FPS)
        davis/JPEGImages/480p/sceneNNN/00000.jpg ...        test scenes' cam0 frames
        davis/Annotations/480p/sceneNNN/00000.png ...       their masks, DAVIS palette PNGs
        davis/ImageSets/2017/val.txt, train.txt             test scenes / empty
    """
    return cached(cache_dir() / f"video_demo_v{CACHE_VERSION}", _write_demo)


def cached(root: Path, write: Callable[[Path], None]) -> Path:
    """``root``, made by ``write(folder)`` on first use: written into a temporary folder beside it
    and renamed into place, so it only ever appears complete, and reused after."""
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        write(tmp)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: use its copy
            if not root.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write_demo(root: Path) -> None:
    from mmssl.modalities.video.reader import write_video

    splits = {"train": range(NUM_TRAIN), "test": range(NUM_TRAIN, NUM_TRAIN + NUM_TEST)}
    for split, ids in splits.items():
        for i in ids:
            scene = render_scene(i, FRAMES, SIZE)
            folder = root / "videos" / split / scene_name(i)
            folder.mkdir(parents=True)
            for cam in ("cam0", "cam1"):
                write_video(folder / f"{cam}.mp4", scene[cam], fps=FPS)
            if split == "test":
                write_davis_sequence(root / "davis", scene_name(i), scene["cam0"], scene["masks"])
    write_davis_sets(root / "davis", [scene_name(i) for i in splits["test"]])


def write_davis_sets(root: Path, names: list[str]) -> None:
    """ImageSets/2017/val.txt listing ``names``, and an empty train.txt: DAVIS tools expect the
    file, and the demo sets' training data are videos."""
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("".join(f"{n}\n" for n in names))
    (sets / "train.txt").write_text("")


def write_davis_sequence(root: Path, name: str, frames: torch.Tensor, masks: torch.Tensor) -> None:
    """Frames uint8 (T, 3, H, W) -> JPEGImages/480p/<name>/%05d.jpg; masks uint8 (T, H, W) ->
    Annotations/480p/<name>/%05d.png palette PNGs. ("480p" is DAVIS's folder name at any size.)"""
    from PIL import Image

    from mmssl.evaluation.overlay import save_palette_png

    jpegs, pngs = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
    jpegs.mkdir(parents=True, exist_ok=True)
    for t in range(frames.shape[0]):
        Image.fromarray(frames[t].permute(1, 2, 0).numpy()).save(jpegs / f"{t:05d}.jpg", quality=JPEG_QUALITY)
        save_palette_png(masks[t], pngs / f"{t:05d}.png")
