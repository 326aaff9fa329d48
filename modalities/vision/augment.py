"""View settings and the per-item half of the image augmentations: decode, resize, one seed.

Workers only decode: ``DecodeAndDraw`` resizes an item to a fixed working size (so a batch stacks)
and draws one view seed from the item's own ``torch.Generator`` (mmssl.data seeds one per item from
the seed and the global sample index). On the device, ``draw_params`` turns a whole batch's seeds
into every random choice of its views at once (counter-based uniforms, ``mmssl.modalities.hashing``)
and ``mmssl.modalities.vision.batched.make_views`` makes the views, so they depend on (seed, global
sample index) alone, never on workers, process count or resume point.

Each group of crops is described by a frozen ``ViewSettings`` (solo-learn's per-pipeline recipe
keys); a task config holds a tuple of them under ``views`` (``views.0.min_scale=0.08``).

Per crop, ``draw_params`` returns a float32 vector of ``NUM_PARAMS`` entries (the layout below):
the crop box as fractions of the source image, flip, jitter applied, the brightness / contrast /
saturation factors and hue shift, the random order of those four colour ops (as torchvision's
ColorJitter draws it), grayscale, blur, blur sigma and solarize. Every draw is made whatever the
probabilities, so changing one setting never shifts the random stream of the others.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from mmssl.config import ConfigError
from mmssl.modalities.hashing import hashed_uniform

MEAN = (0.485, 0.456, 0.406)  # ImageNet channel statistics, the convention most checkpoints expect
STD = (0.229, 0.224, 0.225)

# Parameter layout of one crop: (top, left, bottom, right) as fractions of the image, then the rest.
BOX, FLIP, JITTER, FACTORS, ORDER, GRAY, BLUR, SIGMA, SOLARIZE = (
    slice(0, 4), 4, 5, slice(6, 10), slice(10, 14), 14, 15, 16, 17)
NUM_PARAMS = 18
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # RandomResizedCrop's aspect-ratio range


@dataclasses.dataclass(frozen=True)
class ViewSettings:
    """One group of crops made with the same recipe (solo-learn's ``augmentations`` entries).

    The defaults are SimCLR's ImageNet views (arXiv:2002.05709, colour strength 0.5); tasks set
    their own. ``size`` None means the task's ``image_size``.
    """

    crops: int = 1  # how many crops of this group each image yields
    size: int | None = None  # output side in pixels
    min_scale: float = 0.08  # crop area as a share of the image, uniform in [min_scale, max_scale]
    max_scale: float = 1.0
    flip_prob: float = 0.5
    brightness: float = 0.4  # factor uniform in [max(0, 1 - b), 1 + b], as torchvision's ColorJitter
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift uniform in [-hue, hue] turns of the colour wheel
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1  # in pixels of the output crop
    blur_sigma_max: float = 2.0
    solarize_prob: float = 0.0
    # pixels at or above it are inverted, as torchvision's RandomSolarize (BYOL's 0.5); 0 inverts the whole crop
    solarize_threshold: float = 0.5
    # "torchvision": RandomResizedCrop's box, whole source pixels, rejected when it does not fit (ten
    # tries, then a centred crop); "continuous": the first try's box in fractions of a pixel, clamped to
    # the image, placed uniformly (the crop of affine-grid loops; on 32 px sources it keeps more distinct
    # crops and resamples every one: docs/results/image.md)
    crop: str = "torchvision"


CROP_SAMPLERS = ("torchvision", "continuous")


def check_views(views: tuple[ViewSettings, ...], key: str = "views") -> None:
    """Raise a one-line ConfigError for the first bad setting (named as ``views.I.field``)."""
    if not views:
        raise ConfigError(f"{key}: at least one group of crops is needed")
    for i, v in enumerate(views):
        name = f"{key}.{i}"
        for field in ("flip_prob", "jitter_prob", "gray_prob", "blur_prob", "solarize_prob"):
            p = getattr(v, field)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name}.{field} is a probability in [0, 1], got {p}")
        if v.crops < 1:
            raise ConfigError(f"{name}.crops must be at least 1, got {v.crops}")
        if v.size is not None and v.size < 1:
            raise ConfigError(f"{name}.size must be a positive number of pixels, got {v.size}")
        if not 0.0 < v.min_scale <= v.max_scale <= 1.0:
            raise ConfigError(f"{name}: need 0 < min_scale <= max_scale <= 1, got {v.min_scale} and {v.max_scale}")
        for field in ("brightness", "contrast", "saturation"):
            if getattr(v, field) < 0:
                raise ConfigError(f"{name}.{field} must be >= 0, got {getattr(v, field)}")
        if not 0.0 <= v.solarize_threshold <= 1.0:
            raise ConfigError(f"{name}.solarize_threshold must be in [0, 1], got {v.solarize_threshold}")
        if not 0.0 <= v.hue <= 0.5:
            raise ConfigError(f"{name}.hue must be in [0, 0.5], got {v.hue}")
        if v.crop not in CROP_SAMPLERS:
            raise ConfigError(f"{name}.crop is one of {', '.join(CROP_SAMPLERS)}, not {v.crop!r}")
        if not 0.0 < v.blur_sigma_min <= v.blur_sigma_max:
            raise ConfigError(f"{name}: need 0 < blur_sigma_min <= blur_sigma_max, got "
                              f"{v.blur_sigma_min} and {v.blur_sigma_max}")


def blur_kernel(size: int) -> int:
    """Odd Gaussian kernel of ~10% of the crop side, at least 3 (SimCLR: 23 px at 224)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


# Per crop, the counters of its uniform draws (DRAWS_PER_CROP of them, crop c at c * DRAWS_PER_CROP):
# the box's TRIES tries of (area, log aspect ratio), then each try's (top, left) placement, then flip,
# jitter, the four colour factors, four keys whose ranks give the colour ops' order, grayscale,
# blur, sigma and solarize.
TRIES = 10
_AREA, _ASPECT, _TOP, _LEFT = (slice(k * TRIES, (k + 1) * TRIES) for k in range(4))
_FLIP, _JITTER, _FACTORS, _ORDER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = (
    4 * TRIES, 4 * TRIES + 1, slice(4 * TRIES + 2, 4 * TRIES + 6), slice(4 * TRIES + 6, 4 * TRIES + 10),
    4 * TRIES + 10, 4 * TRIES + 11, 4 * TRIES + 12, 4 * TRIES + 13)
DRAWS_PER_CROP = 4 * TRIES + 14


def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, scale: tuple[float, float],
               u: torch.Tensor, continuous: bool = False) -> torch.Tensor:
    """Random crops (top, left, h, w) in pixels, drawn as RandomResizedCrop does, for N images at once.

    heights, widths: (N,) image sides; u: float64 (N, 4 * TRIES) uniforms laid out as
    (area, aspect, top, left) x TRIES. Of the TRIES tries (an area share uniform in ``scale`` and a log
    aspect ratio uniform in [log 3/4, log 4/3]) the first box that fits is placed uniformly; if none
    fits, the largest centred box whose aspect ratio lies in [3/4, 4/3]. Returns int64 (N, 4).
    With ``continuous``, the first try's box unrounded, each side clamped to the image's, its top-left
    corner uniform over the places where it fits: float64 (N, 4).
    """
    H, W = heights.double()[:, None], widths.double()[:, None]  # (N, 1)
    target = H * W * (scale[0] + (scale[1] - scale[0]) * u[:, _AREA])
    aspect = torch.exp(_LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * u[:, _ASPECT])
    if continuous:
        h = torch.sqrt(target[:, 0] / aspect[:, 0]).minimum(H[:, 0])
        w = torch.sqrt(target[:, 0] * aspect[:, 0]).minimum(W[:, 0])
        return torch.stack([u[:, _TOP][:, 0] * (H[:, 0] - h), u[:, _LEFT][:, 0] * (W[:, 0] - w), h, w], dim=1)
    w, h = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))  # half to even, as round()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (N, TRIES)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, first)[:, 0]

    h, w, H, W = pick(h), pick(w), H[:, 0], W[:, 0]
    top = torch.floor(pick(u[:, _TOP]) * (H - h + 1))
    left = torch.floor(pick(u[:, _LEFT]) * (W - w + 1))
    ratio = W / H  # the fallback: the whole image, trimmed to the nearest allowed aspect ratio
    fw = torch.where(ratio > 4 / 3, torch.round(H * (4 / 3)), W)
    fh = torch.where(ratio < 3 / 4, torch.round(W / (3 / 4)), H)
    ok = fits.any(dim=1)
    box = torch.stack([torch.where(ok, top, torch.div(H - fh, 2, rounding_mode="floor")),
                       torch.where(ok, left, torch.div(W - fw, 2, rounding_mode="floor")),
                       torch.where(ok, h, fh), torch.where(ok, w, fw)], dim=1)
    return box.long()


def draw_params(views: tuple[ViewSettings, ...], sizes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Every random choice of N images' crops, at once -> float32 (N, total crops, NUM_PARAMS).

    sizes: int64 (N, 2), each source image's (height, width); seeds: int64 (N,), each image's view
    seed (``item_seed``). Crop c of image n reads the uniforms ``hashed_uniform(seed_n)`` at counters
    c * DRAWS_PER_CROP onwards (layout above), so an image's parameters are a function of its seed and
    size alone, the same in any batch, on any device. Every draw is made whatever the
    probabilities, so changing one setting never shifts the draws of the others.
    """
    if seeds.device.type == "mps":  # no float64 there: draw on the CPU, the views are still made on the device
        return draw_params(views, sizes.cpu(), seeds.cpu()).to(seeds.device)
    total = sum(v.crops for v in views)
    u = hashed_uniform(seeds, total * DRAWS_PER_CROP).reshape(-1, total, DRAWS_PER_CROP)  # (N, crops, draws)
    heights, widths = sizes[:, 0].to(seeds.device), sizes[:, 1].to(seeds.device)
    out, first = [], 0
    for v in views:
        g = u[:, first:first + v.crops].reshape(-1, DRAWS_PER_CROP)  # (N * crops, draws), image-major
        H, W = heights.repeat_interleave(v.crops), widths.repeat_interleave(v.crops)
        top, left, h, w = crop_boxes(H, W, (v.min_scale, v.max_scale), g, v.crop == "continuous").double().unbind(1)
        H, W = H.double(), W.double()
        lo = torch.tensor([max(0.0, 1 - v.brightness), max(0.0, 1 - v.contrast), max(0.0, 1 - v.saturation), -v.hue],
                          dtype=torch.float64, device=u.device)
        hi = torch.tensor([1 + v.brightness, 1 + v.contrast, 1 + v.saturation, v.hue], dtype=torch.float64, device=u.device)
        columns = [top / H, left / W, (top + h) / H, (left + w) / W, g[:, _FLIP] < v.flip_prob,
                   g[:, _JITTER] < v.jitter_prob]
        factors = lo + (hi - lo) * g[:, _FACTORS]  # (N * crops, 4)
        order = g[:, _ORDER].argsort(dim=1)  # ranks of four uniforms: a uniform permutation, as randperm(4)
        rest = [g[:, _GRAY] < v.gray_prob, g[:, _BLUR] < v.blur_prob,
                v.blur_sigma_min + (v.blur_sigma_max - v.blur_sigma_min) * g[:, _SIGMA], g[:, _SOLARIZE] < v.solarize_prob]
        rows = torch.cat([torch.stack([c.double() for c in columns], 1), factors, order.double(),
                          torch.stack([c.double() for c in rest], 1)], dim=1)  # (N * crops, NUM_PARAMS)
        out.append(rows.reshape(-1, v.crops, NUM_PARAMS))
        first += v.crops
    return torch.cat(out, dim=1).float()


def item_seed(gen: torch.Generator) -> torch.Tensor:
    """The one draw an item's generator makes for its views: the seed ``draw_params`` hashes (int64, 0-d)."""
    return torch.randint(2**62, (), generator=gen)


def working_size(views: tuple[ViewSettings, ...], size: int | None) -> int:
    """The side every training image is resized to in the workers: ``size``, or by default the
    largest crop side. Crops are cut from this square picture (boxes are fractions of the image, so
    a non-square image keeps its proportions), so a crop of the whole image loses no detail and
    the batch moved to the device is B x 3 x S x S bytes; raise it for images much larger than the
    crops to keep detail in small crops."""
    return size or max(v.size for v in views)


def sized_views(views: tuple[ViewSettings, ...], size: int) -> tuple[ViewSettings, ...]:
    """``views`` with every crop size set: a group whose ``size`` is None gets ``size`` (the
    encoder's input side)."""
    return tuple(dataclasses.replace(v, size=v.size or size) for v in views)


class DecodeAndDraw:
    """The worker's whole job: uint8 (3, H, W) -> {"image": uint8 (3, S, S), "view_seed": int64 (),
    "source_size": int64 (2,)}, the image resized to the working size, its view seed and its (H, W)
    before the resize (the crop boxes keep the source's proportions). ``draw_params`` turns a batch's
    seeds and sizes into its views' parameters on the device."""

    def __init__(self, views: tuple[ViewSettings, ...], size: int):
        self.views, self.size = views, size

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> dict:
        return {**self.resize(img), "view_seed": item_seed(gen)}

    def resize(self, img: torch.Tensor) -> dict:
        """The item's part that draws nothing: {"image": uint8 (3, S, S), "source_size": int64 (2,)}."""
        check_image(img)
        source_size = torch.tensor(img.shape[-2:], dtype=torch.long)
        if img.shape[-2:] != (self.size, self.size):
            from torchvision.transforms.v2.functional import resize  # here: see _transforms()

            img = resize(img, [self.size, self.size], antialias=True)
        return {"image": img, "source_size": source_size}


def simclr_views(min_scale: float = 0.2) -> tuple[ViewSettings]:
    """SimCLR's two crops from one recipe (arXiv:2002.05709; MoCo v2, SimSiam and SupCon use the same):
    crops of ``min_scale``-100% of the area (the paper: 8-100%), flip, colour jitter 0.4 / 0.4 / 0.4 /
    0.1 with p 0.8, grayscale p 0.2; no blur, which the paper drops for 32 px CIFAR images
    (``views.0.blur_prob=0.5`` gives its ImageNet views)."""
    return (ViewSettings(crops=2, min_scale=min_scale, blur_prob=0.0),)


def byol_views(min_scale: float = 0.4) -> tuple[ViewSettings, ViewSettings]:
    """BYOL's asymmetric pair (arXiv:2006.07733; Barlow Twins uses the same): crops, flip, jitter 0.4 /
    0.4 / 0.2 / 0.1 with p 0.8, grayscale p 0.2, the second view solarized with p 0.2. The paper blurs
    view 0 always and view 1 with p 0.1; at 32 px neither blurs, as in the CIFAR recipes
    (``views.0.blur_prob=1.0 views.1.blur_prob=0.1`` gives the ImageNet views). The default crops of
    40-100% (the paper: 8-100%) keep the object in both views of a small image."""
    return (ViewSettings(min_scale=min_scale, saturation=0.2, blur_prob=0.0),
            ViewSettings(min_scale=min_scale, saturation=0.2, blur_prob=0.0, solarize_prob=0.2))


def mae_views(size: int | None, min_scale: float = 0.2) -> tuple[ViewSettings]:
    """MAE's only augmentation (arXiv:2111.06377): a random resized crop and a flip (bilinear, where
    the paper resamples bicubically), no colour changes."""
    return (ViewSettings(size=size, min_scale=min_scale, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0),)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) images (..., 3, H, W) -> float32 (x - MEAN) / STD."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
    return (x - mean[:, None, None]) / std[:, None, None]


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of normalize, clamped to [0, 1] for plotting: (..., 3, H, W) -> same shape."""
    mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
    return (x.float() * std[:, None, None] + mean[:, None, None]).clamp(0, 1)


def _transforms():
    """torchvision's transforms, imported on first use: the package import costs a second of start-up
    that audio and video runs, and commands that never touch an image, would otherwise pay."""
    from torchvision.transforms import v2

    return v2


def check_image(img: torch.Tensor) -> None:
    """Views are made from uint8 (3, H, W) images, as the workers decode them."""
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a uint8 image (3, H, W), got {img.dtype} {tuple(img.shape)}")


class EvalView:
    """Deterministic view for probes and kNN: resize the shorter side to ``size`` (upsampling smaller
    images) and centre-crop. Returns float32 (3, size, size); ``gen`` is accepted and unused."""

    def __init__(self, size: int):
        v2 = _transforms()
        self.transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        check_image(img)
        return self.transform(img)
