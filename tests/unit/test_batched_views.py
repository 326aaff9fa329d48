"""Views made on whole batches (modalities/vision/batched.py) from parameters drawn per item.

- a batch's views are its samples' views made one at a time;
- views depend only on (seed, global sample index): workers, processes, resume;
- each op agrees with torchvision.transforms.v2's per-item op: exactly at fixed parameters, and
  in distribution (mean and spread of its effect over a few hundred draws) at the same ranges;
- every config key reaches the view maker, and bad values end in one ConfigError line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
import yaml
from recipes import CONFIGS, readings_under_other_defaults
from torchvision.transforms import v2

from mmssl import config as config_lib
from mmssl.config import ConfigError
from mmssl.data import StepBatchSampler
from mmssl.modalities.hashing import hashed_uniform
from mmssl.modalities.vision import ViewSettings, draw_params, make_views
from mmssl.modalities.vision.augment import BOX, DRAWS_PER_CROP, FLIP, GRAY, ORDER, SOLARIZE, TRIES, crop_boxes
from mmssl.modalities.vision.batched import (
    apply_indexed,
    apply_where,
    brightness,
    colour_jitter_grouped,
    colour_jitter_masked,
    contrast,
    gaussian_blur,
    grayscale,
    hue,
    resized_crops,
    rgb_to_hsv,
    saturation,
    view_group,
)
from mmssl.run import resolve_config, run_training
from mmssl.tasks.simclr_image import SimCLRImage

TINY = ["batch_size=4", "num_workers=0", "image_size=16", "encoder.convnet.widths=8,8,8,8", "objective.proj_hidden=16", "objective.proj_dim=8",
        "evaluate=false"]
# Everything on: two groups of different sizes (upsampled and downsampled crops), every colour op.
ALL_ON = (ViewSettings(crops=2, size=32, blur_prob=0.5, solarize_prob=0.5, gray_prob=0.5),
          ViewSettings(crops=3, size=8, min_scale=0.05, max_scale=0.3, blur_prob=0.5, solarize_prob=0.5))
N = 400  # draws per distribution test


def smooth_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    """A float image (3, size, size) in [0, 1] with colour gradients and texture, every hue present."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    return (x + 0.1 * torch.rand(3, size, size, generator=g)).clamp(0, 1)


def sizes(n: int, height: int, width: int) -> torch.Tensor:
    return torch.tensor([[height, width]] * n)


def draws(settings: ViewSettings, n: int = N, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, NUM_PARAMS): one crop's parameters for n items with their own view seeds."""
    return draw_params((settings,), sizes(n, size, size), torch.arange(n) + seed * 100_003)[:, 0]


def ours(img: torch.Tensor, settings: ViewSettings, n: int = N) -> torch.Tensor:
    """n views of one float image through the batched ops: (n, 3, S, S)."""
    p = draws(settings, n, img.shape[-1])
    return view_group(img[None], p, torch.zeros(n, dtype=torch.long), settings)


def theirs(img: torch.Tensor, transform, n: int = N) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.stack([transform(img) for _ in range(n)])


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor) -> None:
    """Per-draw statistics a, b (n,): means within 4 standard errors of their difference (a false
    alarm once in ~16,000 for independent draws), spreads within 25% (the standard error of a
    standard deviation over n = 400 is ~3.5%, so ~6 errors for the ratio of two)."""
    a, b = a.double(), b.double()
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9, (a.mean().item(), b.mean().item(), se)
    if max(a.std(), b.std()) > 1e-6:
        assert 0.8 <= a.std() / b.std() <= 1.25, (a.std().item(), b.std().item())


# only the op under test: a crop of the whole image, no flip, every other op off
IDENTITY = ViewSettings(size=32, min_scale=1.0, max_scale=1.0, flip_prob=0.0, brightness=0.0, contrast=0.0,
                        saturation=0.0, hue=0.0, jitter_prob=1.0, gray_prob=0.0, blur_prob=0.0)


# ---- batch = one by one ---------------------------------------------------------------------

def test_batch_views_equal_views_made_one_image_at_a_time():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    params = draw_params(ALL_ON, sizes(6, 40, 30), torch.arange(6))
    batch = make_views(images, params, ALL_ON)
    assert [tuple(v.shape) for v in batch] == [(6, 3, 32, 32)] * 2 + [(6, 3, 8, 8)] * 3
    single = [make_views(images[i:i + 1], params[i:i + 1], ALL_ON) for i in range(6)]
    for k, view in enumerate(batch):
        torch.testing.assert_close(view, torch.cat([s[k] for s in single]), rtol=0, atol=1e-6)
    # every random op happened somewhere in this batch, so the comparison covered it
    for column in (FLIP, GRAY, SOLARIZE):
        assert 0 < params[:, :, column].sum() < params[:, :, column].numel()


@contextlib.contextmanager
def no_host_reads():
    """Fails if the block reads a tensor's values on the host (a device sync on an accelerator)."""
    reads = []
    names = ("item", "__bool__", "__int__", "__float__", "tolist", "nonzero")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counted(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return originals[name](self, *args, **kwargs)
        return read

    try:
        for name in names:
            setattr(torch.Tensor, name, counted(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    assert reads == []


def test_the_accelerator_path_equals_the_cpu_path_and_reads_nothing_back_to_the_host():
    """On a GPU every sample is computed and then selected (no device sync); on a CPU
    only the chosen samples are computed. Both give the same views."""
    x = torch.stack([smooth_image(s) for s in range(6)])
    mask = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    factor = torch.linspace(0.2, 1.8, 6)
    ops = [(op, factor) for op in (brightness, contrast, saturation)] + [(hue, factor - 1)]
    ops.append((lambda z, sigma: gaussian_blur(z, sigma, 5), factor))
    for fn, arg in ops:
        indexed = apply_indexed(mask, fn, x, arg)
        with no_host_reads():
            selected = apply_where(mask, fn, x, arg)
        torch.testing.assert_close(selected, indexed, rtol=0, atol=1e-6)
        assert torch.equal(indexed[~mask], x[~mask]) and not torch.equal(indexed[mask], x[mask])


def test_cpu_crops_equal_roi_align_for_boxes_smaller_and_larger_than_the_output():
    """On a CPU, boxes that roi_align reads with one sample per output pixel go through grid_sample
    (faster there); larger ones keep roi_align's averaging. Both kinds in one batch equal roi_align's."""
    from torchvision.ops import roi_align

    x = torch.stack([smooth_image(s, 40) for s in range(4)])
    views = (ViewSettings(crops=8, size=16, min_scale=0.02, max_scale=0.6),)
    p = draw_params(views, torch.full((4, 2), 40), torch.arange(4)).transpose(0, 1).reshape(32, -1)
    boxes, owner = p[:, BOX], torch.arange(4).repeat(8)
    sides = (boxes[:, 2:] - boxes[:, :2]) * 40
    assert (sides <= 16).all(1).any() and (sides > 16).any(1).any()  # both paths are taken
    rois = torch.stack([owner.float(), boxes[:, 1] * 40, boxes[:, 0] * 40, boxes[:, 3] * 40, boxes[:, 2] * 40], 1)
    theirs = roi_align(x, rois, (16, 16), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(resized_crops(x, boxes, owner, 16), theirs, rtol=0, atol=1e-6)
    # every box on the fast path, as when the crops are no smaller than the working image
    small = boxes.clone()
    small[:, 2:] = small[:, :2] + (small[:, 2:] - small[:, :2]).clamp(max=0.3)
    rois[:, 3:] = torch.stack([small[:, 3] * 40, small[:, 2] * 40], 1)
    theirs = roi_align(x, rois, (16, 16), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(resized_crops(x, small, owner, 16), theirs, rtol=0, atol=1e-6)


def test_colour_jitter_is_torchvisions_ops_in_each_samples_order():
    """Per sample, torchvision's adjust_* functions in that sample's order with its factors, or
    nothing where jitter is off; ops with a 0 setting skipped. The CPU path (grouped by op, host
    reads) and the accelerator path (masked, no host reads) both give it."""
    n, g = 48, torch.Generator().manual_seed(1)
    x = torch.stack([smooth_image(s) for s in range(n)])
    factors = torch.cat([0.4 + 1.2 * torch.rand(n, 3, generator=g), 0.4 * torch.rand(n, 1, generator=g) - 0.2], 1)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(n)])
    on = torch.rand(n, generator=g) < 0.8
    F = v2.functional
    theirs_ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for active in ((True,) * 4, (True, False, True, False), (False, True, False, True), (False,) * 3 + (True,)):
        expected = []
        for i in range(n):
            y = x[i]
            for op in order[i].tolist() if on[i] else []:
                y = theirs_ops[op](y, float(factors[i, op])) if active[op] else y
            expected.append(y)
        expected = torch.stack(expected)
        grouped = colour_jitter_grouped(x, on, factors, order, active)
        with no_host_reads():
            masked = colour_jitter_masked(x, on, factors, order, active)
        for got in (grouped, masked):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert torch.equal(grouped[~on], x[~on]) and torch.equal(masked[~on], x[~on])


# ---- views depend on (seed, global sample index) only ----------------------------------------

def _views(task, cfg, start: int, world: int, rank: int, n: int) -> list[list[torch.Tensor]]:
    it = iter(task.train_loader(cfg, start, world, rank))
    return [task.on_device(cfg, next(it))["views"] for _ in range(n)]


def test_views_are_the_same_for_any_workers_processes_and_resume_point(tmp_path):
    task, cfg = resolve_config("simclr_image", None, {"output_dir": str(tmp_path)}, [*TINY, "views.0.blur_prob=0.5"])
    base = _views(task, cfg, 0, 1, 0, 3)  # the demo set fits in in_memory_mib: gathered batches
    decoded = dataclasses.replace(cfg, in_memory_mib=0)  # every item decoded in the loader
    workers = _views(task, dataclasses.replace(decoded, num_workers=2), 0, 1, 0, 3)
    in_process = _views(task, dataclasses.replace(decoded, num_workers=0), 0, 1, 0, 3)
    resumed = _views(task, cfg, 2, 1, 0, 1)  # starts at global batch 2
    two = dataclasses.replace(cfg, batch_size=2)  # 2 processes x 2 = the same global batch of 4
    halves = [_views(task, two, 0, 2, r, 3) for r in (0, 1)]
    decoded_halves = [_views(task, dataclasses.replace(decoded, batch_size=2), 0, 2, r, 3) for r in (0, 1)]
    for b in range(3):
        for k in range(2):
            assert torch.equal(base[b][k], workers[b][k]) and torch.equal(base[b][k], in_process[b][k])
            assert torch.equal(base[b][k], torch.cat([halves[0][b][k], halves[1][b][k]]))
            assert torch.equal(base[b][k], torch.cat([decoded_halves[0][b][k], decoded_halves[1][b][k]]))
    assert all(torch.equal(x, y) for x, y in zip(base[2], resumed[0]))
    assert not torch.equal(base[0][0], base[0][1]) and not torch.equal(base[0][0], base[1][0])
    # the process slices are StepBatchSampler's
    whole, half = StepBatchSampler(4000, 4, 1, 0, cfg.seed), StepBatchSampler(4000, 2, 2, 1, cfg.seed)
    assert whole.batch(1)[2:] == half.batch(1)


class _Crash(Exception):
    pass


class _CrashingSimCLR(SimCLRImage):
    """Dies while making the views of its third batch (after the checkpoint of step 2)."""

    def on_device(self, cfg, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise _Crash
        return super().on_device(cfg, batch)


def test_a_killed_image_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    def run(name, task=None):
        t, cfg = resolve_config("simclr_image", None, {"output_dir": str(tmp_path / name), "max_steps": 4},
                                [*TINY, "save_every=2", "log_every=1"])
        run_training(task or t, cfg)
        return load_file(str(tmp_path / name / "encoder" / "model.safetensors"))

    straight = run("straight")
    with pytest.raises(_Crash):
        run("resumed", _CrashingSimCLR())
    resumed = run("resumed")
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-6, msg=k)


# ---- each op against torchvision ------------------------------------------------------------

def test_ops_equal_torchvision_at_fixed_parameters():
    x = torch.stack([smooth_image(s) for s in range(3)])
    for f in (0.3, 1.0, 1.6):
        factor = torch.full((3,), f)
        torch.testing.assert_close(brightness(x, factor), v2.functional.adjust_brightness(x, f), rtol=0, atol=1e-6)
        torch.testing.assert_close(contrast(x, factor), v2.functional.adjust_contrast(x, f), rtol=0, atol=1e-6)
        torch.testing.assert_close(saturation(x, factor), v2.functional.adjust_saturation(x, f), rtol=0, atol=1e-6)
    for shift in (-0.45, -0.1, 0.0, 0.25):
        torch.testing.assert_close(hue(x, torch.full((3,), shift)), v2.functional.adjust_hue(x, shift), rtol=0, atol=1e-5)
    torch.testing.assert_close(grayscale(x).expand_as(x), v2.functional.rgb_to_grayscale(x, 3), rtol=0, atol=1e-6)
    for sigma in (0.3, 1.5):
        torch.testing.assert_close(gaussian_blur(x, torch.full((3,), sigma), 7),
                                   v2.functional.gaussian_blur(x, [7, 7], [sigma, sigma]), rtol=0, atol=1e-6)
    # An enlarging crop is torchvision's bilinear resize of the box (half-pixel centres). Only the
    # outermost output pixels differ: their samples lie past the box's edge pixel centres, where
    # roi_align reads the image's next pixel and torchvision repeats the box's edge.
    top, left, h, w = 5, 3, 20, 14
    box = torch.tensor([[top / 32, left / 32, (top + h) / 32, (left + w) / 32]])
    a = resized_crops(x[:1], box, torch.zeros(1, dtype=torch.long), 40)
    b = v2.functional.resized_crop(x[:1], top, left, h, w, [40, 40], antialias=True)
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], rtol=0, atol=1e-5)


def test_crop_boxes_are_distributed_as_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    H, W, scale = 30, 40, (0.08, 1.0)
    ours_boxes = crop_boxes(torch.full((N,), H), torch.full((N,), W), scale,
                            hashed_uniform(torch.arange(N), 4 * TRIES)).double()
    torch.manual_seed(0)
    img = torch.zeros(3, H, W)
    their_boxes = torch.tensor([RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(N)],
                               dtype=torch.float64)
    for boxes in (ours_boxes, their_boxes):
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    area = [b[:, 2] * b[:, 3] / (H * W) for b in (ours_boxes, their_boxes)]
    assert_same_distribution(*area)
    assert_same_distribution(*[torch.log(b[:, 3] / b[:, 2]) for b in (ours_boxes, their_boxes)])
    assert_same_distribution(*[b[:, 0] + b[:, 2] / 2 for b in (ours_boxes, their_boxes)])  # vertical centre
    assert_same_distribution(*[b[:, 1] + b[:, 3] / 2 for b in (ours_boxes, their_boxes)])  # horizontal centre
    # the drawn parameters are these boxes, as fractions of the image
    p = draw_params((ViewSettings(),), sizes(1, H, W), torch.tensor([0]))[0, 0, BOX]
    t, lft, h, w = crop_boxes(torch.tensor([H]), torch.tensor([W]), scale,
                              hashed_uniform(torch.tensor([0]), 4 * TRIES))[0].tolist()
    torch.testing.assert_close(p, torch.tensor([t / H, lft / W, (t + h) / H, (lft + w) / W]))


def test_continuous_crop_boxes_are_the_first_try_clamped_and_placed_anywhere():
    """``crop=continuous``: each box is the first try's area and aspect, unrounded, each side clamped to
    the image's, its corner uniform over where it fits, written out here from the same uniforms."""
    H, W, scale = 30, 40, (0.3, 1.0)
    u = hashed_uniform(torch.arange(N), 4 * TRIES)
    boxes = crop_boxes(torch.full((N,), H), torch.full((N,), W), scale, u, continuous=True)
    assert boxes.dtype == torch.float64
    for n in (0, 1, 7, N - 1):
        area = H * W * (scale[0] + (scale[1] - scale[0]) * u[n, 0].item())
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[n, TRIES].item())
        h, w = min(math.sqrt(area / ratio), H), min(math.sqrt(area * ratio), W)
        want = [u[n, 2 * TRIES].item() * (H - h), u[n, 3 * TRIES].item() * (W - w), h, w]
        assert boxes[n].tolist() == pytest.approx(want, rel=1e-12)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H + 1e-9).all() and (left + w <= W + 1e-9).all()
    free = h < H  # sides not clamped to the image's are fractions of a pixel, where torchvision's are whole
    assert free.float().mean() > 0.5 and (h[free] != h[free].round()).all()
    whole = crop_boxes(torch.full((N,), H), torch.full((N,), W), scale, u)
    assert torch.equal(whole, whole.round()) and whole.dtype == torch.int64
    # the setting reaches the drawn parameters; nothing else drawn changes
    seeds = torch.arange(6)
    p_whole = draw_params((ViewSettings(),), sizes(6, H, W), seeds)
    p_cont = draw_params((ViewSettings(crop="continuous"),), sizes(6, H, W), seeds)
    assert not torch.equal(p_whole[..., BOX], p_cont[..., BOX])
    torch.testing.assert_close(p_whole[..., 4:], p_cont[..., 4:])


def _mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _uniforms(seed: int, count: int) -> list[float]:
    lo, hi = seed & 0xFFFFFFFF, seed >> 32
    a = _mix32(lo ^ _mix32(hi)) | 1
    b = _mix32(lo ^ 0x9E3779B9 ^ _mix32(hi ^ 0x85EBCA6B) ^ _mix32(0x85EBCA6B))
    return [(_mix32((a * c + b) & 0xFFFFFFFF) + 0.5) * 2.0**-32 for c in range(count)]


def test_draw_params_follow_their_documented_layout():
    """A plain reference, one Python number at a time: the seed's two 32-bit halves give the row's
    affine map, counter c's uniform is mix32(a c + b mod 2**32), crop k reads counters
    k * DRAWS_PER_CROP onwards as (area, aspect, top, left) x 10 tries, flip, jitter, four factors,
    four order keys, grayscale, blur, sigma, solarize."""
    def reference(v: ViewSettings, H: int, W: int, u) -> list[float]:
        def rng(lo, hi, x):
            return lo + (hi - lo) * x
        area, aspect, tops, lefts = (u[k * TRIES:(k + 1) * TRIES] for k in range(4))
        for i in range(TRIES):
            target = H * W * rng(v.min_scale, v.max_scale, area[i])
            ratio = math.exp(rng(math.log(3 / 4), math.log(4 / 3), aspect[i]))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= W and 0 < h <= H:
                top, left = math.floor(tops[i] * (H - h + 1)), math.floor(lefts[i] * (W - w + 1))
                break
        else:
            w = round(H * 4 / 3) if W / H > 4 / 3 else W
            h = round(W / (3 / 4)) if W / H < 3 / 4 else H
            top, left = (H - h) // 2, (W - w) // 2
        r = u[4 * TRIES:]
        row = [top / H, left / W, (top + h) / H, (left + w) / W, r[0] < v.flip_prob, r[1] < v.jitter_prob]
        row += [rng(max(0.0, 1 - s), 1 + s, x) for s, x in zip((v.brightness, v.contrast, v.saturation), r[2:5])]
        row += [rng(-v.hue, v.hue, r[5])] + sorted(range(4), key=lambda k: r[6 + k])
        return row + [r[10] < v.gray_prob, r[11] < v.blur_prob, rng(v.blur_sigma_min, v.blur_sigma_max, r[12]),
                      r[13] < v.solarize_prob]

    seeds = [0, 1, 7, 2**32 - 1, 2**32, 2**32 + 7, 3 * 2**40 + 11, 2**62 - 1]
    shapes = [(40, 30), (30, 40), (10, 100), (100, 10), (32, 32), (5, 7), (64, 48), (1, 1)]
    got = draw_params(ALL_ON, torch.tensor(shapes), torch.tensor(seeds))
    crops = [v for v in ALL_ON for _ in range(v.crops)]
    for n, (seed, (H, W)) in enumerate(zip(seeds, shapes)):
        u = _uniforms(seed, len(crops) * DRAWS_PER_CROP)
        expected = [reference(v, H, W, u[k * DRAWS_PER_CROP:(k + 1) * DRAWS_PER_CROP]) for k, v in enumerate(crops)]
        torch.testing.assert_close(got[n], torch.tensor(expected, dtype=torch.float64).float(), rtol=0, atol=1e-7)


def test_a_batch_draws_each_image_as_if_alone():
    shapes, seeds = torch.tensor([[40, 30], [8, 64], [32, 32]]), torch.tensor([5, 2**40 + 5, 5])
    whole = draw_params(ALL_ON, shapes, seeds)
    for i in range(3):
        assert torch.equal(whole[i:i + 1], draw_params(ALL_ON, shapes[i:i + 1], seeds[i:i + 1]))
    assert not torch.equal(whole[0], whole[1])  # the seed's high half counts
    # the colour ops' order is a uniform permutation of the four, as randperm(4) draws it
    orders = draws(ViewSettings(), n=2400)[:, ORDER].long()
    assert (orders.sort(dim=1).values == torch.arange(4)).all()
    counts = torch.unique(orders, dim=0, return_counts=True)[1]
    expected = 2400 / 24
    assert len(counts) == 24 and ((counts - expected) ** 2 / expected).sum() < 49.7  # chi-square, 23 dof, p 0.001


def test_no_fitting_box_falls_back_to_the_central_crop():
    boxes = crop_boxes(torch.tensor([10, 100]), torch.tensor([100, 10]), (0.9, 1.0),
                       hashed_uniform(torch.arange(2), 4 * TRIES))
    assert boxes.tolist() == [[0, 43, 10, 13], [43, 0, 13, 10]]


def test_flip_matches_random_horizontal_flip():
    img = smooth_image()
    settings = dataclasses.replace(IDENTITY, flip_prob=0.5)
    flipped = [(v - img.flip(-1)).abs().amax((1, 2, 3)) < 1e-5 for v in
               (ours(img, settings), theirs(img, v2.RandomHorizontalFlip(0.5)))]
    assert_same_distribution(flipped[0].float(), flipped[1].float())


@pytest.mark.parametrize("op, stat", [
    ("brightness", lambda v: v.mean((1, 2, 3))),
    ("contrast", lambda v: grayscale(v).std((1, 2, 3))),
    ("saturation", lambda v: rgb_to_hsv(v)[:, 1].mean((1, 2))),
])
def test_jitter_op_matches_color_jitter(op, stat):
    img = smooth_image()
    settings = dataclasses.replace(IDENTITY, **{op: 0.4})
    assert_same_distribution(stat(ours(img, settings)), stat(theirs(img, v2.ColorJitter(**{op: 0.4}))))


def test_hue_shift_matches_color_jitter():
    img = smooth_image()
    before = rgb_to_hsv(img[None])[0, 0]

    def shift(v):  # mean hue change over the image, in turns, wrapped to [-0.5, 0.5)
        return ((rgb_to_hsv(v)[:, 0] - before + 0.5) % 1.0 - 0.5).mean((1, 2))

    a, b = shift(ours(img, dataclasses.replace(IDENTITY, hue=0.1))), shift(theirs(img, v2.ColorJitter(hue=0.1)))
    assert_same_distribution(a, b)
    assert 0.05 < a.std() < 0.065  # uniform on [-0.1, 0.1]: 0.2 / sqrt(12) = 0.058


def test_full_jitter_in_random_order_matches_color_jitter():
    """All four ops with p 0.8 and grayscale p 0.2: the order matters (brightness before or after
    contrast changes the result), so agreement here checks the per-sample order too."""
    img = smooth_image()
    settings = dataclasses.replace(IDENTITY, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                                   jitter_prob=0.8, gray_prob=0.2)
    ref = v2.Compose([v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), v2.RandomGrayscale(0.2)])
    a, b = ours(img, settings), theirs(img, ref)
    for stat in (lambda v: v.mean((1, 2, 3)), lambda v: v[:, 0].mean((1, 2)) - v[:, 2].mean((1, 2)),
                 lambda v: grayscale(v).std((1, 2, 3)), lambda v: rgb_to_hsv(v)[:, 1].mean((1, 2))):
        assert_same_distribution(stat(a), stat(b))


def test_grayscale_matches_random_grayscale():
    img = smooth_image()
    gray = [(v - v.mean(1, keepdim=True)).abs().amax((1, 2, 3)) < 1e-6 for v in
            (ours(img, dataclasses.replace(IDENTITY, gray_prob=0.2)), theirs(img, v2.RandomGrayscale(0.2)))]
    assert_same_distribution(gray[0].float(), gray[1].float())


def test_blur_matches_gaussian_blur():
    """64 px crops: a 7-tap kernel (~10% of the side), sigma uniform in [0.1, 2]."""
    img = smooth_image(size=64)

    def detail(v):  # energy left in the finest scale
        return (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3))

    settings = dataclasses.replace(IDENTITY, size=64, blur_prob=0.5)
    ref = v2.RandomApply([v2.GaussianBlur(7, sigma=(0.1, 2.0))], p=0.5)
    assert_same_distribution(detail(ours(img, settings)), detail(theirs(img, ref)))


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.0])
def test_solarize_matches_random_solarize(threshold):
    img = smooth_image()
    a = ours(img, dataclasses.replace(IDENTITY, solarize_prob=0.2, solarize_threshold=threshold))
    b = theirs(img, v2.RandomSolarize(threshold, p=0.2))
    assert_same_distribution(a.mean((1, 2, 3)), b.mean((1, 2, 3)))
    changed = [(v - img).abs().amax((1, 2, 3)) > 0 for v in (a, b)]
    assert_same_distribution(changed[0].float(), changed[1].float())


# ---- config keys ---------------------------------------------------------------------------

# A view that only crops the whole image: each key below then has a visible effect alone.
PLAIN = ["views.0.min_scale=1.0", "views.0.flip_prob=0", "views.0.jitter_prob=0", "views.0.gray_prob=0",
         "views.0.blur_prob=0", "views.0.solarize_prob=0"]


def first_views(tmp_path, *overrides: str) -> list[torch.Tensor]:
    """The first batch's views of simclr_image with ``overrides``, in [0, 1]."""
    from mmssl.modalities.vision import denormalize

    task, cfg = resolve_config("simclr_image", None, {"output_dir": str(tmp_path)}, [*TINY, *PLAIN, *overrides])
    return [denormalize(v) for v in task.on_device(cfg, next(iter(task.train_loader(cfg, 0, 1, 0))))["views"]]


def test_every_view_key_reaches_the_view_maker(tmp_path):
    base = first_views(tmp_path)[0]
    assert base.shape == (4, 3, 16, 16)
    assert len(first_views(tmp_path, "views.0.crops=3")) == 3
    assert first_views(tmp_path, "views.0.size=8")[0].shape == (4, 3, 8, 8)
    assert first_views(tmp_path, "image_size=24")[0].shape == (4, 3, 24, 24)  # size None follows image_size
    assert not torch.equal(first_views(tmp_path, "views.0.min_scale=0.1", "views.0.max_scale=0.2")[0], base)
    assert not torch.equal(first_views(tmp_path, "views.0.crop=continuous")[0], base)
    torch.testing.assert_close(first_views(tmp_path, "views.0.flip_prob=1")[0], base.flip(-1))
    jitter = {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2}
    for key, value in jitter.items():
        on = first_views(tmp_path, "views.0.jitter_prob=1", *[f"views.0.{k}={value if k == key else 0}" for k in jitter])
        assert not torch.allclose(on[0], base, atol=1e-3), key
        off = first_views(tmp_path, "views.0.jitter_prob=0", *[f"views.0.{k}={value if k == key else 0}" for k in jitter])
        torch.testing.assert_close(off[0], base)
    gray = first_views(tmp_path, "views.0.gray_prob=1")[0]
    torch.testing.assert_close(gray, gray.mean(1, keepdim=True).expand_as(gray), atol=1e-5, rtol=0)
    torch.testing.assert_close(first_views(tmp_path, "views.0.solarize_prob=1")[0],
                               torch.where(base >= 0.5, 1 - base, base), atol=1e-5, rtol=0)
    torch.testing.assert_close(first_views(tmp_path, "views.0.solarize_prob=1", "views.0.solarize_threshold=0")[0],
                               1 - base, atol=1e-5, rtol=0)

    def detail(v):
        return (v[..., 1:] - v[..., :-1]).abs().mean().item()

    light = first_views(tmp_path, "views.0.blur_prob=1", "views.0.blur_sigma_min=0.3", "views.0.blur_sigma_max=0.3")
    heavy = first_views(tmp_path, "views.0.blur_prob=1", "views.0.blur_sigma_min=2", "views.0.blur_sigma_max=2")
    assert detail(heavy[0]) < detail(light[0]) < detail(base)


def test_working_size_sets_the_decoded_size(tmp_path):
    task, cfg = resolve_config("simclr_image", None, {"output_dir": str(tmp_path)}, [*TINY, "working_size=24"])
    batch = next(iter(task.train_loader(cfg, 0, 1, 0)))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["image"].dtype == torch.uint8
    assert batch["view_seed"].shape == (4,) and batch["source_size"].tolist() == [[32, 32]] * 4
    task, cfg = resolve_config("swav_image", None, {"output_dir": str(tmp_path)},
                               [*TINY, "views=[{crops: 2}, {crops: 2, size: 40, min_scale: 0.05, max_scale: 0.4}]"])
    assert next(iter(task.train_loader(cfg, 0, 1, 0)))["image"].shape[-1] == 40  # default: the largest crop


def test_task_recipes_keep_their_papers_views():
    def views(name, recipe=None):
        """The task's views at its defaults, or under configs/RECIPE."""
        path = str(CONFIGS / recipe) if recipe else None
        return resolve_config(name, path, {}, [])[1].views

    byol = views("byol_image")
    assert (byol[0].solarize_prob, byol[1].solarize_prob, byol[0].saturation) == (0.0, 0.2, 0.2)
    # the demo takes SimCLR's two crops of 40-100%, as solo-learn's CIFAR SwAV; the CIFAR recipe keeps the
    # paper's multi-crop at its 14% split
    assert views("swav_image") == views("simclr_image")
    recipe = views("swav_image", "swav_cifar10.yaml")
    assert [(v.crops, v.size, v.min_scale, v.max_scale) for v in recipe] == [(2, None, 0.14, 1.0), (4, 16, 0.05, 0.14)]
    assert views("densecl_image") == views("moco_image")  # so that the two demos compare
    # the demos' crop-invariance pairs crop 40-100% at 32 px; the CIFAR recipes keep solo-learn's 8-100%
    for name in ("simclr_image", "moco_image", "simsiam_image", "byol_image"):
        assert {v.min_scale for v in views(name)} == {0.4}, name
    for name in ("simclr", "moco", "supcon"):
        assert views(f"{name}_image", f"{name}_cifar10.yaml")[0].min_scale == 0.08
    assert views("exemplar_image") == (dataclasses.replace(views("simclr_image")[0], crops=1),)  # one crop of SimCLR's
    assert views("supcon_image") == views("simclr_image")  # the SupCon paper's views are SimCLR's
    assert views("exemplar_image", "exemplar_imagenet.yaml")[0].min_scale == 0.2  # the authors' code's
    for name in ("simclr_image", "moco_image", "simsiam_image"):
        (v,) = views(name)
        assert (v.crops, v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob, v.gray_prob) == \
            (2, 0.4, 0.4, 0.4, 0.1, 0.8, 0.2)
    for name, scale in (("mae_image", 0.2), ("rotnet_image", 0.5)):
        (v,) = views(name)
        assert (v.crops, v.min_scale, v.flip_prob, v.jitter_prob, v.gray_prob, v.blur_prob) == (1, scale, 0.5, 0, 0, 0)
    # DeepCluster: MAE's crops, half of them inverted on the demo; its ImageNet recipe keeps the paper's
    (v,) = views("deepcluster_image")
    assert (v.min_scale, v.jitter_prob, v.solarize_prob, v.solarize_threshold) == (0.2, 0, 0.5, 0.0)
    (v,) = views("deepcluster_image", "deepcluster_imagenet.yaml")
    assert (v.min_scale, v.jitter_prob, v.solarize_prob) == (0.08, 0, 0)


VIEW_RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml")
                      if isinstance((yaml.safe_load(p.read_text()).get("views") or [None])[0], dict))


# A demo's views unlike any recipe's in every setting
OTHER_VIEWS = (ViewSettings(crops=3, size=12, min_scale=0.3, max_scale=0.9, flip_prob=0.25, brightness=0.1, contrast=0.2,
                            saturation=0.3, hue=0.05, jitter_prob=0.3, gray_prob=0.6, blur_prob=0.7, blur_sigma_min=0.3,
                            blur_sigma_max=1.1, solarize_prob=0.4, solarize_threshold=0.3, crop="continuous"),) * 3


@pytest.mark.parametrize("recipe", VIEW_RECIPES)
def test_a_recipe_states_every_setting_of_each_of_its_views(recipe, monkeypatch):
    """A recipe's views override the task's item by item, so what an item leaves unsaid comes from the
    demo's defaults: each item states every setting, so that a change to a demo's views cannot move a
    paper's recipe (the DINO recipe once took the demo's four local crops)."""
    assert all(getattr(OTHER_VIEWS[0], f.name) != f.default for f in dataclasses.fields(ViewSettings))
    own, other = readings_under_other_defaults(CONFIGS / recipe, monkeypatch, [{"views": OTHER_VIEWS}],
                                               lambda cfg: cfg.views)
    assert other == own


@pytest.mark.parametrize("task, overrides, needle", [
    ("simclr_image", ["views.0.flip_prob=1.5"], "views.0.flip_prob is a probability"),
    ("simclr_image", ["views.0.gray_prob=-0.1"], "views.0.gray_prob is a probability"),
    ("byol_image", ["views.1.solarize_prob=2"], "views.1.solarize_prob is a probability"),
    ("byol_image", ["views.1.solarize_threshold=1.5"], "views.1.solarize_threshold must be in [0, 1]"),
    ("simclr_image", ["views.0.min_scale=0.9", "views.0.max_scale=0.5"], "min_scale <= max_scale"),
    ("simclr_image", ["views.0.size=0"], "views.0.size must be a positive"),
    ("simclr_image", ["views.0.blur_sigma_min=2", "views.0.blur_sigma_max=1"], "blur_sigma_min <= blur_sigma_max"),
    ("simclr_image", ["views.0.hue=0.7"], "views.0.hue"),
    ("simclr_image", ["views.0.crop=kornia"], "views.0.crop is one of torchvision, continuous, not 'kornia'"),
    ("simclr_image", ["working_size=0"], "working_size"),
    ("simclr_image", ["views.0.crops=1"], "need 2 or more"),
    ("mae_image", ["views.0.crops=2"], "one crop"),
    ("simclr_image", ["views.2.size=8"], "views.2: views has items 0..0"),
    ("simclr_image", ["views.0.nosuch=1"], "unknown config key 'views.0.nosuch'"),
    ("simclr_image", ["views.0.flip_prob=often"], "views.0.flip_prob: expected a number"),
])
def test_bad_view_settings_give_one_config_error_line(task, overrides, needle):
    with pytest.raises(ConfigError) as e:
        resolve_config(task, None, {}, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---- nested sections in config.py ----------------------------------------------------------

def test_views_from_a_yaml_recipe_and_the_saved_config(tmp_path):
    recipe = tmp_path / "byol.yaml"
    recipe.write_text("task: byol_image\nviews:\n  - {min_scale: 0.08, blur_prob: 1.0}\n  - {blur_prob: 0.1}\n")
    task, cfg = resolve_config("byol_image", str(recipe), {}, ["views.1.hue=0.05"])
    # list items override the task's own views field by field
    assert (cfg.views[0].min_scale, cfg.views[0].blur_prob, cfg.views[0].saturation) == (0.08, 1.0, 0.2)
    assert (cfg.views[1].min_scale, cfg.views[1].blur_prob, cfg.views[1].solarize_prob, cfg.views[1].hue) == \
        (0.4, 0.1, 0.2, 0.05)
    config_lib.save(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["views"][1]["hue"] == 0.05
    assert config_lib.differences(saved, cfg) == []
    # a saved config read back (as `mmssl probe` does) gives the same config
    assert config_lib.apply_overrides(task.default_config(), saved) == cfg
    changed = config_lib.apply_overrides(cfg, {"views.0.flip_prob": 0.0, "num_workers": 0})
    assert config_lib.differences(saved, changed) == ["views.0.flip_prob: 0.5 -> 0.0"]
    fewer = config_lib.apply_overrides(cfg, {"views": [{}]})
    assert "views: 2 -> 1" in config_lib.differences(saved, fewer)
    assert "views.1.hue: 0.05" in config_lib.describe(cfg)
    # trackers (tensorboard's hparams) take scalars only: the flat form has no lists or mappings
    assert config_lib.flat(cfg)["views.1.hue"] == 0.05
    assert not any(isinstance(v, (list, dict)) for v in config_lib.flat(cfg).values())


def test_a_whole_section_on_the_command_line(tmp_path):
    # an item of the task's own views keeps what the section leaves unsaid (BYOL's second view solarizes)
    _, cfg = resolve_config("byol_image", None, {}, ["views=[{crops: 2}, {size: 8}]"])
    assert [(v.crops, v.size, v.min_scale, v.solarize_prob) for v in cfg.views] == [(2, None, 0.4, 0.0),
                                                                                  (1, 8, 0.4, 0.2)]
    # an item beyond the task's own views starts from ViewSettings' defaults
    _, cfg = resolve_config("swav_image", None, {}, ["views=[{crops: 2}, {crops: 6, size: 8}]"])
    assert [(v.crops, v.size, v.min_scale) for v in cfg.views] == [(2, None, 0.4), (6, 8, ViewSettings().min_scale)]
    with pytest.raises(ConfigError, match="expected a list of ViewSettings"):
        resolve_config("swav_image", None, {}, ["views=3"])
    with pytest.raises(ConfigError, match="image_size has no fields"):
        resolve_config("swav_image", None, {}, ["image_size.x=3"])
