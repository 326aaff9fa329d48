"""Image views made on whole batches on the device, from per-sample parameters.

``make_views(images, params, views)`` takes the collated uint8 batch (B, 3, S, S) and the parameters
``draw_params`` drew per crop from the samples' view seeds (B, V, NUM_PARAMS), and returns the V views, each float32
(B, 3, size, size) normalised with MEAN / STD, in the order of the settings' groups. Every op is
per sample, so a batch's views equal its samples' views made one at a time.

The ops follow torchvision.transforms.v2 on float images in [0, 1], with its value ranges and
order: resized crop, horizontal flip, colour jitter (brightness, contrast, saturation, hue in a
per-sample random order), grayscale (ITU-R 601-2 luma: 0.2989 R + 0.587 G + 0.114 B), Gaussian
blur (kernel ~10% of the crop side, reflect padding, per-sample sigma) and solarize (at the group's
threshold, 0.5 unless set).
Unlike torchvision on uint8 images, nothing is rounded to 8 bits between ops.

Crops use ``torchvision.ops.roi_align`` (aligned=True, adaptive sampling) rather than
``affine_grid`` + ``grid_sample``: when upsampling both are the same half-pixel bilinear
interpolation (they agree to 1e-5), but roi_align averages ceil(box / output) samples per output
pixel, a box filter that keeps a crop from aliasing when it is downscaled (working size above the
crop size), as torchvision's ``antialias=True`` does. On a CPU its kernel is slower than grid_sample's,
so there the boxes it reads with one sample per output pixel (boxes no larger than the output) go
through grid_sample at the same points, which gives the same crops.
All of this is plain batched torch: kornia would add a dependency for the same ops, and its
per-op random sampling is not driven by our per-sample seeds.

On an accelerator, random choices are applied by selecting over the whole batch: no host sync, at
the price of computing an op for samples that skip it. On a CPU, where reading indices
costs nothing, the costly ops (colour jitter, blur) run on the chosen samples only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmssl.modalities.vision.augment import (
    BLUR,
    BOX,
    FACTORS,
    FLIP,
    GRAY,
    JITTER,
    ORDER,
    SIGMA,
    SOLARIZE,
    ViewSettings,
    blur_kernel,
    check_image,
    draw_params,
    item_seed,
    mae_views,
    normalize,
)

LUMA = (0.2989, 0.587, 0.114)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a for the samples where mask (N,) is set, b elsewhere; a and b broadcast to (N, C, H, W).

    A lerp with weights 0 and 1 is exact at both ends (torch.lerp returns its start at weight 0 and its
    end at weight 1) and, on a CPU, runs several times faster than torch.where over a per-sample mask."""
    return torch.lerp(b, a, mask.to(b.dtype)[:, None, None, None])


def apply_where(mask: torch.Tensor, fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """fn(x, *args) for the samples where mask (N,) is set, x elsewhere: computed for every sample
    and selected, which needs no host sync."""
    return _where(mask, fn(x, *args), x)


def apply_indexed(mask: torch.Tensor, fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """The same as apply_where, computing fn only for the chosen samples (their indices are read on the host)."""
    idx = mask.bool().nonzero().squeeze(1)
    out = x.clone()
    if len(idx):
        out[idx] = fn(x[idx], *(a[idx] for a in args))
    return out


def _apply(mask: torch.Tensor, fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    # On a CPU reading the indices costs nothing and skips the unchosen samples' work; on an
    # accelerator a host read would stall the queue, so every sample is computed there.
    return (apply_indexed if x.device.type == "cpu" else apply_where)(mask, fn, x, *args)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of float images x (B, 3, H, W): boxes (N, 4) as (top, left, bottom, right) fractions of the
    image, owner (N,) the image each box is cut from -> (N, 3, size, size)."""
    H, W = x.shape[-2:]
    rois = torch.stack([owner.to(x.dtype), boxes[:, 1] * W, boxes[:, 0] * H, boxes[:, 3] * W, boxes[:, 2] * H], 1)
    from torchvision.ops import roi_align  # here: importing torchvision costs every non-image run a second

    def averaged(r: torch.Tensor) -> torch.Tensor:
        return roi_align(x, r, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)

    if x.device.type != "cpu":
        return averaged(rois)
    # On a CPU roi_align's kernel is slower than grid_sample's. Where roi_align takes one sample per
    # output pixel (a box no larger than the output, as its adaptive sampling ratio ceil(box / size)
    # is computed in its kernel) both are the same bilinear read at the same points, with the border
    # repeated, so those boxes go through grid_sample; larger ones keep roi_align's averaging.
    spans = (rois[:, 3:] - 0.5) - (rois[:, 1:3] - 0.5)  # (N, 2) box width, height as the kernel has them
    one = (torch.ceil(spans / size) == 1).all(1)
    if bool(one.all()):
        return _bilinear_crops(x, rois, spans, size)
    out = x.new_empty(len(rois), x.shape[1], size, size)
    idx, rest = one.nonzero().squeeze(1), (~one).nonzero().squeeze(1)
    if len(idx):
        out[idx] = _bilinear_crops(x, rois[idx], spans[idx], size)
    out[rest] = averaged(rois[rest])
    return out


def _bilinear_crops(x: torch.Tensor, rois: torch.Tensor, spans: torch.Tensor, size: int) -> torch.Tensor:
    """roi_align (aligned, one sample per output pixel) by grid_sample: output pixel i of a box reads
    the image at start - 0.5 + (i + 0.5) span / size pixels, given to grid_sample in its
    [-1, 1] coordinates (align_corners=False: pixel p sits at (2 p + 1) / side - 1)."""
    H, W = x.shape[-2:]
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # (size,)
    at = (rois[:, 1:3, None] - 0.5) + steps * spans[:, :, None]  # (N, 2, size): x, y pixel coordinates
    sides = torch.tensor([W, H], device=x.device, dtype=x.dtype)[None, :, None]
    u = (2 * at + 1) / sides - 1
    grid = torch.stack([u[:, 0, None, :].expand(-1, size, -1), u[:, 1, :, None].expand(-1, -1, size)], dim=-1)
    return F.grid_sample(x[rois[:, 0].long()], grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)[:, None]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor x + (1 - factor) other, clamped to [0, 1] (torchvision's _blend), in one lerp pass."""
    return torch.lerp(other.expand_as(x), x, factor[:, None, None, None]).clamp_(0, 1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor[:, None, None, None]).clamp_(0, 1)  # the blend with black


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, hue in turns [0, 1)."""
    v, c, h6 = _hexcone(x)
    s = c / torch.where(v > 0, v, 1.0)
    return torch.stack([_wrap6(h6) / 6, s, v], 1)


def _wrap6(t: torch.Tensor) -> torch.Tensor:
    """t mod 6 in [0, 6), in place (t - 6 floor(t / 6): cheaper than torch.remainder on a CPU)."""
    return t.sub_(t.div(6).floor_().mul_(6))


def _hexcone(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value (max channel), chroma (max - min) and hue in sixths of a turn, in [-1, 5), each (N, H, W).
    The hue's sector comes from the largest channel (red, then green, then blue on ties). The
    sectors are chosen by 0/1 weights rather than torch.where, which is slow on a CPU; where the
    chroma is 0 the hue is 0 (every channel equal) and never read."""
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    is_r = (v == r).to(x.dtype)
    is_g = (v == g).to(x.dtype).mul_(1 - is_r)
    is_b = 1 - is_r - is_g
    # red: (g - b) / c; green: 2 + (b - r) / c; blue: 4 + (r - g) / c
    num = is_r * (g - b) + is_g * (b - r) + is_b * (r - g)
    h6 = num.div_(c.clamp_min(torch.finfo(x.dtype).tiny)).add_(2 * is_g + 4 * is_b)
    return v, c, h6


def _from_hexcone(v: torch.Tensor, c: torch.Tensor, h6: torch.Tensor) -> torch.Tensor:
    """Inverse of _hexcone for any real h6 (read mod 6): channel n is v - c clamp(min(k, 4 - k), 0, 1),
    k = (n + h6) mod 6 (n = 5, 3, 1)."""
    n = torch.tensor([5.0, 3.0, 1.0], device=v.device, dtype=v.dtype)[None, :, None, None]
    k = _wrap6(n + h6[:, None])
    torch.minimum(k, 4 - k, out=k).clamp_(0, 1)  # in place: few temporaries of the (N, 3, H, W) size
    return torch.addcmul(v[:, None], c[:, None], k, value=-1)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` (N,) turns, as torchvision's adjust_hue; (N, 3, H, W) -> same."""
    v, c, h6 = _hexcone(x)
    return _from_hexcone(v, c, h6.add_(6 * shift[:, None, None]))


COLOUR_OPS = (brightness, contrast, saturation, hue)  # the indices ORDER refers to, as torchvision's


def colour_jitter(x: torch.Tensor, on: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                  active: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """ColorJitter with per-sample factors (N, 4) and op order (N, 4), where ``on`` (N,) is set;
    ops whose setting is 0 (``active`` False) are identities and skipped."""
    if x.device.type == "cpu":
        return colour_jitter_grouped(x, on, factors, order, active)
    return colour_jitter_masked(x, on, factors, order, active)


def colour_jitter_masked(x: torch.Tensor, on: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                         active: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """colour_jitter with every op computed for every sample and selected: no host reads."""
    for slot in range(4):
        for op, (fn, used) in enumerate(zip(COLOUR_OPS, active)):
            if used:
                x = apply_where(on.bool() & (order[:, slot] == op), fn, x, factors[:, op])
    return x


def colour_jitter_grouped(x: torch.Tensor, on: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                          active: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """colour_jitter with each op computed only for the samples that take it. In each of the four
    slots the rows are reordered by their op (a stable sort, the counts read on the host), so every
    op works on one contiguous slice and writes it in place, rather than gathering its samples and
    scattering them back into a copy of the batch."""
    used = torch.tensor([*active, False], device=x.device)  # index -1: no op in this slot
    pos = torch.arange(len(x), device=x.device)  # pos[i]: the sample now in row i
    for slot in range(4):
        op = torch.where(on.bool(), order[:, slot], -1)
        op = torch.where(used[op], op, -1)[pos]
        perm = torch.argsort(op, stable=True)
        x, pos, op = x.index_select(0, perm), pos[perm], op[perm]
        start = 0
        for k, n in enumerate(torch.bincount(op + 1, minlength=5).tolist()):
            if k and n:
                rows = x[start:start + n]
                rows.copy_(COLOUR_OPS[k - 1](rows, factors[pos[start:start + n], k - 1]))
            start += n
    return x.index_select(0, torch.argsort(pos))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with per-sample sigma (N,), reflect padding."""
    N, C, H, W = x.shape
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (N C, kernel): one filter per channel
    pad = kernel // 2
    y = F.pad(x.reshape(1, N * C, H, W), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=N * C)  # rows
    y = F.conv2d(y, k[:, None, None, :], groups=N * C)  # columns
    return y.reshape(N, C, H, W)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """1 - x where x >= threshold, else x (torchvision's solarize on float images)."""
    if threshold == 0.5:  # then it is the smaller of the two, without a torch.where
        return torch.minimum(x, 1 - x)
    return torch.where(x >= threshold, 1 - x, x)


def view_group(x: torch.Tensor, params: torch.Tensor, owner: torch.Tensor, v: ViewSettings) -> torch.Tensor:
    """One group's crops: float images (B, 3, H, W) in [0, 1], their params (N, NUM_PARAMS) and
    owner images (N,) -> (N, 3, size, size) in [0, 1]."""
    y = resized_crops(x, params[:, BOX], owner, v.size)
    y = _where(params[:, FLIP] > 0.5, y.flip(-1), y)
    if v.jitter_prob > 0:
        active = (v.brightness > 0, v.contrast > 0, v.saturation > 0, v.hue > 0)
        y = colour_jitter(y, params[:, JITTER] > 0.5, params[:, FACTORS], params[:, ORDER].long(), active)
    if v.gray_prob > 0:
        y = _where(params[:, GRAY] > 0.5, grayscale(y), y)
    if v.blur_prob > 0:
        kernel = blur_kernel(v.size)
        y = _apply(params[:, BLUR] > 0.5, lambda z, sigma: gaussian_blur(z, sigma, kernel), y, params[:, SIGMA])
    if v.solarize_prob > 0:
        y = _where(params[:, SOLARIZE] > 0.5, solarize(y, v.solarize_threshold), y)
    return y


def make_views(images: torch.Tensor, params: torch.Tensor, views: tuple[ViewSettings, ...]) -> list[torch.Tensor]:
    """uint8 images (B, 3, S, S) + params (B, V, NUM_PARAMS) -> V normalised float32 views (B, 3, size, size).

    The crops of one group are made together, (crops x B) at once, then split back into views.
    ``views`` must have every ``size`` set.
    """
    B = images.shape[0]
    x = images.float() / 255
    out, first = [], 0
    for v in views:
        p = params[:, first:first + v.crops].transpose(0, 1).reshape(v.crops * B, -1)  # crop-major
        owner = torch.arange(B, device=images.device).repeat(v.crops)
        out += list(normalize(view_group(x, p, owner, v)).chunk(v.crops))
        first += v.crops
    return out


class ItemViews:
    """The batched views of one item (for per-item users such as fine-tuning): ``(img, gen)`` ->
    a list of float32 (3, size, size), or the one view when the settings give a single crop.
    ``batch`` makes the views of a list of items at once, the same views."""

    def __init__(self, views: tuple[ViewSettings, ...]):
        self.views = views

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor | list[torch.Tensor]:
        out = self.batch([img], gen)
        return out[0] if torch.is_tensor(out) else [v[0] for v in out]

    def batch(self, images: list[torch.Tensor], gen: torch.Generator,
              device: torch.device | str = "cpu") -> torch.Tensor | list[torch.Tensor]:
        """Calling the views on each of ``images`` in turn, stacked, made on ``device`` in one pass
        per image size: -> a list of float32 (N, 3, size, size), or the one view's tensor.

        ``gen`` gives one seed per image in list order, as the per-item calls draw them, so the
        views and the generator's state after the call are the same as theirs."""
        if not images:
            raise ValueError("ItemViews.batch needs at least one image")
        for img in images:
            check_image(img)
        seeds = torch.stack([item_seed(gen) for _ in images])
        shapes = [tuple(img.shape[-2:]) for img in images]
        out: list[torch.Tensor] | None = None
        for shape in dict.fromkeys(shapes):  # images of one size are made together, in list order
            rows = torch.tensor([i for i, s in enumerate(shapes) if s == shape])
            imgs = torch.stack([images[i] for i in rows.tolist()]).to(device)
            params = draw_params(self.views, torch.tensor([shape] * len(rows)), seeds[rows].to(device))
            made = make_views(imgs, params, self.views)
            if out is None:
                out = [v.new_empty(len(images), *v.shape[1:]) for v in made]
            for whole, part in zip(out, made):
                whole[rows.to(device)] = part
        return out[0] if len(out) == 1 else out


def MAEView(size: int, min_scale: float = 0.2) -> ItemViews:
    """Per-item MAE view: ``(img, gen)`` -> float32 (3, size, size)."""
    return ItemViews(mae_views(size, min_scale))
