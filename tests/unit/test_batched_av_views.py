"""Audio and video views made on whole batches on the device (Task.on_device).

A batch's views are the concatenation of its samples' views made one by one; they depend only on
(seed, global sample index), not on loader workers, the process split or a resume; and each op's
statistics match its per-item definition (the distributions the per-item recipes drew from).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmssl.data import StepBatchSampler
from mmssl.modalities.audio.augment import add_noise, apply_gain, augment_batch, draw_params, hashed_normal, time_mask
from mmssl.modalities.video.views import crop_views, draw_view
from mmssl.run import resolve_config

SMALL = {
    "simclr_audio": {"batch_size": 4, "crop_samples": 3200},
    "mae_audio": {"batch_size": 4, "crop_samples": 5120, "n_mels": 16},
    "colorize_video": {"batch_size": 2, "frame_size": 32},
    "tcn_video": {"batch_size": 2, "frame_size": 32, "anchors": 4},
    "tcn_video/single": {"batch_size": 2, "frame_size": 32, "anchors": 4, "views": "single"},
    "mae_video": {"batch_size": 2, "frame_size": 32, "clip_len": 4},
}


def setup(key: str, tmp_path, **extra):
    overrides = {"num_workers": 0, **SMALL[key], **extra}
    return resolve_config(key.split("/")[0], None, {"output_dir": str(tmp_path / "run")},
                          [f"{k}={v}" for k, v in overrides.items()])


def views(task, cfg, batch: dict):
    with torch.no_grad():
        return task.on_device(cfg, batch)


def cat(parts: list):
    """Concatenates nested dicts / lists of (B, ...) tensors along the batch."""
    if isinstance(parts[0], dict):
        return {k: cat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(parts[0], list):
        return [cat([p[j] for p in parts]) for j in range(len(parts[0]))]
    return torch.cat(parts)


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def global_batches(task, cfg, count: int, start: int = 0, world: int = 1, num_workers: int = 0) -> list:
    """The views of global batches start .. start + count - 1, the processes' shares concatenated."""
    import dataclasses

    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // world, num_workers=num_workers)
    streams = [iter(task.train_loader(cfg, start, world, rank)) for rank in range(world)]
    return [cat([views(task, cfg, next(s)) for s in streams]) for _ in range(count)]


@pytest.mark.parametrize("key", list(SMALL))
def test_batch_views_are_the_samples_views_made_one_by_one(key, tmp_path):
    task, cfg = setup(key, tmp_path)
    batch = next(iter(task.train_loader(cfg, 0, 1, 0)))
    whole = views(task, cfg, batch)
    one_by_one = cat([views(task, cfg, {k: v[i:i + 1] for k, v in batch.items()}) for i in range(cfg.batch_size)])
    assert_same(whole, one_by_one)


def test_process_split_keeps_every_global_sample_and_its_seed():
    one = StepBatchSampler(40, 4, 1, 0, seed=3)
    two = [StepBatchSampler(40, 2, 2, r, seed=3) for r in range(2)]
    for g in range(12):  # past an epoch boundary (10 global batches)
        assert two[0].batch(g) + two[1].batch(g) == one.batch(g)


@pytest.mark.parametrize("key", ["simclr_audio", "colorize_video", "tcn_video", "mae_video"])
def test_views_depend_only_on_seed_and_global_sample_index(key, tmp_path):
    task, cfg = setup(key, tmp_path)
    reference = global_batches(task, cfg, 3)
    assert_same(global_batches(task, cfg, 3, num_workers=2), reference)
    assert_same(global_batches(task, cfg, 3, world=2), reference)
    assert_same(global_batches(task, cfg, 1, start=2), reference[2:])  # a run resumed at global batch 2
    other = global_batches(task, setup(key, tmp_path, seed=1)[1], 1)
    with pytest.raises(AssertionError):
        assert_same(other, reference[:1])


# audio: each op against its per-item definition ----------------------------------------------------

def reference_augment(wav: torch.Tensor, p: dict, noise: torch.Tensor) -> torch.Tensor:
    """The per-item recipe written plainly for one crop (L,): gain, noise at the SNR of the gained
    crop, zeroed spans."""
    wav = wav * 10 ** (float(p["gain_db"]) / 20)
    power = max(float(wav.pow(2).mean()), 1e-10)
    wav = wav + noise * math.sqrt(power / 10 ** (float(p["snr_db"]) / 10))
    for start, width in zip(p["mask_start"].tolist(), p["mask_width"].tolist()):
        wav = torch.cat([wav[:start], wav.new_zeros(width), wav[start + width:]])
    return wav


def many_params(n: int, length: int, **kw) -> dict:
    items = [draw_params(torch.Generator().manual_seed(10_000 + i), length, **kw) for i in range(n)]
    return {k: torch.stack([p[k] for p in items]) for k in items[0]}


def ks_uniform(x: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample ``x`` and the uniform law on [lo, hi]."""
    s = ((x.double() - lo) / (hi - lo)).sort().values
    n = len(s)
    return max(float((torch.arange(1, n + 1) / n - s).max()), float((s - torch.arange(n) / n).max()))


def ks_critical(n: int) -> float:
    """KS distance exceeded with probability 0.001 by a sample of the law itself."""
    return 1.95 / math.sqrt(n)


def test_augment_batch_is_the_per_item_recipe():
    length, n = 1600, 6
    gen = torch.Generator().manual_seed(0)
    wav = torch.randn(n, length, generator=gen) * torch.rand(n, 1, generator=gen)
    p = many_params(n, length, time_masks=2, max_mask=0.3)
    noise = hashed_normal(p["noise_seed"], length)
    expected = torch.stack([reference_augment(wav[i], {k: v[i] for k, v in p.items()}, noise[i]) for i in range(n)])
    torch.testing.assert_close(augment_batch(wav, p), expected, rtol=1e-5, atol=1e-6)


def test_gain_is_uniform_in_db_and_scales_the_crop():
    n = 4000
    p = many_params(n, 3200, gain_db=6.0)
    assert ks_uniform(p["gain_db"], -6.0, 6.0) < ks_critical(n)
    wav = torch.randn(8, 100)
    ratio_db = 20 * torch.log10(apply_gain(wav, p["gain_db"][:8]) / wav)
    torch.testing.assert_close(ratio_db, p["gain_db"][:8, None].expand(8, 100), atol=1e-4, rtol=0)


def test_added_noise_has_the_drawn_snr():
    n, length = 500, 16000
    p = many_params(n, length, snr_db=(10.0, 40.0))
    assert ks_uniform(p["snr_db"], 10.0, 40.0) < ks_critical(n)
    wav = torch.randn(n, length, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.01, 3, n)[:, None]
    added = add_noise(wav, p["snr_db"], p["noise_seed"]) - wav
    measured = 10 * torch.log10(wav.pow(2).mean(1) / added.pow(2).mean(1))
    # the power of L normal samples has relative std sqrt(2 / L): 0.049 dB at L = 16000; 6 sigma
    assert (measured - p["snr_db"]).abs().max() < 6 * 10 / math.log(10) * math.sqrt(2 / length)


def test_noise_is_white_gaussian_and_a_function_of_its_seed_alone():
    seeds = torch.randint(2**31, (64,), generator=torch.Generator().manual_seed(2))
    z = hashed_normal(seeds, 20000).double()  # (64, 20000)
    n = z.numel()
    se = 1 / math.sqrt(n)  # standard error of a mean of n unit-variance terms
    assert abs(z.mean()) < 4 * se and abs(z.var() - 1) < 4 * math.sqrt(2) * se
    s = z.flatten().sort().values
    normal_cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    assert float((normal_cdf - torch.arange(1, n + 1) / n).abs().max()) < ks_critical(n)
    for lag in (1, 2, 3):  # lag 1 includes the cosine and sine of one Box-Muller pair
        assert abs((z[:, lag:] * z[:, :-lag]).mean()) < 4 * se * 1.01
    corr = torch.corrcoef(z)[~torch.eye(64, dtype=torch.bool)]
    assert corr.abs().max() < 5 / math.sqrt(z.shape[1])  # rows are independent streams
    # one row alone, or among other rows, is the same noise
    torch.testing.assert_close(hashed_normal(seeds[5:6], 20000).double(), z[5:6], rtol=0, atol=0)
    torch.testing.assert_close(hashed_normal(seeds[:3], 1000).double(), z[:3, :1000], rtol=0, atol=0)


def test_time_masks_cover_what_the_recipe_says():
    n, length, max_mask = 4000, 3200, 0.1
    p = many_params(n, length, time_masks=1, max_mask=max_mask)
    width, start = p["mask_width"][:, 0], p["mask_start"][:, 0]
    assert ks_uniform(width.float() + 0.5, 0, max_mask * length) < ks_critical(n) + 1 / (max_mask * length)
    free = (length - width).clamp_min(1)
    assert ks_uniform((start.float() + 0.5) / free, 0, 1) < ks_critical(n) + 1 / free.min()
    out = time_mask(torch.ones(n, length), p["mask_start"], p["mask_width"])
    coverage = (out == 0).float().mean(1)
    torch.testing.assert_close(coverage, width.float() / length)
    # a width uniform on [0, 0.1 L) covers 5% of the crop on average (std 0.1 / sqrt(12) per crop)
    assert abs(coverage.mean() - max_mask / 2) < 4 * max_mask / math.sqrt(12 * n)
    t = torch.arange(length)
    inside = (t >= start[:, None]) & (t < (start + width)[:, None])
    assert torch.equal(out == 0, inside)  # one contiguous span where it was drawn


# video: the crop and flip against the per-item recipe -------------------------------------------------

def reference_crop(frames: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """The per-item crop: the box of every frame, antialiased bilinear resize, optional mirror."""
    top, left, h, w = box
    x = frames[..., top:top + h, left:left + w].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.flip(-1) if flip else x


def smooth_frames(t: int = 3, side: int = 128) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(side * 1.0), torch.arange(side * 1.0), indexing="ij")
    rgb = [torch.stack([127 + 120 * torch.sin((x + 5 * k) / 9), 127 + 120 * torch.cos(y / 13),
                        127 + 120 * torch.sin((x + y) / 17)]) for k in range(t)]
    return torch.stack(rgb).round().to(torch.uint8)  # (t, 3, side, side), moving along x


def test_view_boxes_have_the_recipes_area_aspect_and_flip_rate():
    n, H, W, min_scale = 2000, 96, 128, 0.3
    v = torch.stack([draw_view(H, W, min_scale, torch.Generator().manual_seed(i)) for i in range(n)])
    h, w = (v[:, 2] - v[:, 0]) * H, (v[:, 3] - v[:, 1]) * W
    assert (v[:, :2] >= 0).all() and (v[:, 2] <= 1).all() and (v[:, 3] <= 1).all()
    area, aspect = h * w / (H * W), w / h
    # boxes are whole pixels: area and aspect are off by at most a pixel's rounding on each side
    assert area.min() >= min_scale - 2 / min(H, W) and area.max() <= 1
    assert aspect.min() >= 3 / 4 - 0.05 and aspect.max() <= 4 / 3 + 0.05
    flip = v[:, 4].mean()
    assert abs(flip - 0.5) < 4 * 0.5 / math.sqrt(n)


def test_crop_views_resample_as_the_per_item_crop():
    frames = smooth_frames()
    size = 64
    for top, left, h, w, flip in [(10, 20, 64, 64, True), (0, 0, 128, 128, False), (5, 7, 100, 80, True),
                                  (30, 2, 50, 90, False)]:
        view = torch.tensor([[top / 128, left / 128, (top + h) / 128, (left + w) / 128, float(flip)]])
        got = crop_views(frames[None], view, size)[0]
        want = reference_crop(frames, (top, left, h, w), size, flip)
        if (h, w) == (size, size):  # no resampling: the box itself, exactly
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        # otherwise both are linear filters of the same region that differ only in their kernel
        # (an area mean against a triangle): on a smooth image well under one grey level on average
        assert (got - want).abs().mean() < 2 / 255 and (got - want).abs().max() < 6 / 255


def test_crop_views_use_one_box_for_every_frame_of_a_clip():
    frames = smooth_frames(t=4)
    view = draw_view(128, 128, 0.3, torch.Generator().manual_seed(3))[None]
    clip = crop_views(frames[None], view, 32)[0]
    frame_by_frame = torch.cat([crop_views(frames[None, t:t + 1], view, 32)[0] for t in range(4)])
    torch.testing.assert_close(clip, frame_by_frame, rtol=0, atol=0)


def test_a_bad_decode_size_is_one_clear_error(tmp_path):
    from mmssl.errors import DataError

    task, cfg = setup("mae_video", tmp_path, decode_size=0)
    with pytest.raises(DataError, match="decode_size must be a positive number of pixels, not 0"):
        task.train_loader(cfg, 0, 1, 0)


def _close(a, b) -> None:
    """Equal batches: the same keys and shapes, values equal up to the summation order of reductions
    (a worker runs one thread, the main process several)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    else:
        assert a == b


@pytest.mark.parametrize("key, extra", [
    ("simclr_audio", {}), ("colorize_video", {}), ("mae_video", {}),
    ("simclr_image", {"batch_size": 4, "encoder.convnet.widths": "8,8,8,8"}),
    ("swav_image", {"batch_size": 4, "encoder.convnet.widths": "8,8,8,8",  # multi-crop: local crops of 16 px
                    "views": "[{crops: 2, min_scale: 0.4}, {crops: 2, size: 16, min_scale: 0.05, max_scale: 0.4}]"}),
])
def test_views_made_in_the_loader_workers_equal_views_made_after_collation(key, extra, tmp_path):
    """view_placement=workers: a worker applies on_device to the batch it collated; the result is the
    batch that on_device makes from the same collated batch in the main process, batch after batch."""
    import functools

    small = SMALL.get(key, {})
    task, cfg = resolve_config(key, None, {"output_dir": str(tmp_path / "run")},
                               [f"{k}={v}" for k, v in {**small, **extra, "num_workers": 2}.items()])
    plain = iter(task.train_loader(cfg, 3, 1, 0))
    in_workers = iter(task.train_loader(cfg, 3, 1, 0, batch_fn=functools.partial(task.on_device, cfg)))
    for _ in range(3):
        _close(next(in_workers), views(task, cfg, next(plain)))
