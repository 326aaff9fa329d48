"""Small labelled image sets and a quadrant-colour encoder for the probe and evaluation tests."""
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


class TinyEncoder(nn.Module):
    """Mean colour of each image quadrant through a linear map: tokens (B, 4, D). The dropout
    makes train mode visible: features only repeat in eval mode."""

    def __init__(self, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj, self.drop, self.embed_dim, self.calls = nn.Linear(3, dim), nn.Dropout(0.5), dim, 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        quadrants = F.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # (B, 4, 3)
        return self.drop(self.proj(quadrants))  # (B, 4, D)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(1)


class ColourImages:
    """n noisy 8x8 images; class c brightens channel c. Items listed in ``unlabelled`` carry -1."""

    def __init__(self, n: int, name: str, seed: int = 0, unlabelled: tuple = ()):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        images = torch.randint(0, 100, (n, 3, 8, 8), generator=g)
        images[torch.arange(n), self.labels] += 150
        self.images, self.name, self.vocab = images.to(torch.uint8), name, ["red", "green", "blue"]
        self.unlabelled = set(unlabelled)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        label = -1 if i in self.unlabelled else int(self.labels[i])
        return {"image": self.images[i], "label": label, "name": f"{self.name}/{i}"}


class DiagonalImages:
    """n noisy 8x8 grey images: class 0 lights the top-left and bottom-right quadrants, class 1 the
    other two. Both classes have the same mean colour, so only where the light falls tells them apart."""

    def __init__(self, n: int, name: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        lit = torch.tensor([[1, 0], [0, 1]]).repeat_interleave(4, 0).repeat_interleave(4, 1)  # (8, 8)
        masks = torch.stack([lit, 1 - lit])[self.labels]  # (n, 8, 8)
        images = 40 + 150 * masks[:, None].expand(n, 3, 8, 8) + torch.randint(0, 60, (n, 3, 8, 8), generator=g)
        self.images, self.name = images.to(torch.uint8), name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


def to_float(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# A ViT MAE small enough for a 16 px image folder to train in seconds.
TINY_MAE = ["encoder.vit.dim=16", "encoder.vit.depth=1", "encoder.vit.heads=2", "image_size=16", "encoder.vit.patch=8",
            "objective.decoder_dim=16", "objective.decoder_depth=1", "objective.decoder_heads=2"]


def dark_and_light_folder(root, train: int, test: int):
    """An imagefolder ``root/{train,test}/{dark,light}/i.png`` of 16 px images told apart by brightness."""
    for split, count in (("train", train), ("test", test)):
        for k, cls in enumerate(("dark", "light")):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 16), (30 + 180 * k, 20 * i, 90)).save(root / split / cls / f"{i}.png")
    return root


class NamedImages:
    """A labelled image source over ``images`` (n, 3, S, S) uint8 and ``labels`` (n,): items carry a name."""

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "name": f"{self.name}/{i}"}


class StripeImages(NamedImages):
    """n 16 px images whose class is the orientation of their stripes (0 horizontal, 1 vertical,
    2 and 3 the two diagonals), each with a random period (4-6 px), phase and pair of colours: the
    colours and the phase carry most of the pixels' variance, the orientation the label."""

    def __init__(self, n: int, name: str, seed: int = 0, size: int = 16):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        coords = torch.stack([yy, xx, yy + xx, yy - xx]).float()  # (4, S, S): the distance along each orientation
        period = torch.randint(4, 7, (n, 1, 1), generator=g).float()
        phase = torch.rand(n, 1, 1, generator=g) * period
        on = ((coords[self.labels] + phase) % period < period / 2).float()[:, None]  # (n, 1, S, S)
        fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        self.images = ((on * fg + (1 - on) * bg) * 255).round().to(torch.uint8)  # (n, 3, S, S)
        self.name, self.vocab = name, ["horizontal", "vertical", "diagonal", "anti-diagonal"]


def bar_masks(labels: torch.Tensor, size: int, bars: int, g: torch.Generator) -> torch.Tensor:
    """Where ``bars`` bars 2-6 px wide lie at random, unevenly spaced offsets, along each image's orientation
    ``labels`` (0 horizontal, 1 vertical, 2 and 3 the diagonals): bool (n, size, size)."""
    n = len(labels)
    yy, xx = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2, indexing="ij")
    angle = torch.tensor([0.0, 90.0, 45.0, -45.0]).deg2rad()[labels][:, None, None]
    across = yy * angle.cos() - xx * angle.sin()  # (n, S, S): distance across the bars' direction
    offset = (torch.rand(n, bars, 1, 1, generator=g) - 0.5) * size
    half_width = 1 + 2 * torch.rand(n, bars, 1, 1, generator=g)
    return ((across[:, None] - offset).abs() < half_width).any(1)


class BarImages(NamedImages):
    """n images whose class is the orientation of their bars (as StripeImages: 0 horizontal, 1 vertical,
    2 and 3 the diagonals): ``bars`` bars 2-6 px wide at random, unevenly spaced offsets, in a random
    pair of colours. Unlike stripes, a bar continues along its direction but nothing repeats across
    it, so where one patch sits relative to another shows in the picture."""

    def __init__(self, n: int, name: str, seed: int = 0, size: int = 32, bars: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        on = bar_masks(self.labels, size, bars, g)[:, None].float()  # (n, 1, S, S)
        fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        self.images = ((on * fg + (1 - on) * bg) * 255).round().to(torch.uint8)  # (n, 3, S, S)
        self.name, self.vocab = name, ["horizontal", "vertical", "diagonal", "anti-diagonal"]


class ShapeImages(NamedImages):
    """The embedded demo's shapes (``generate_shapes``: 10 classes, one filled shape of random colour, scale,
    tilt and place over a patterned background), ``per_class`` images of each class of one split."""

    def __init__(self, per_class: int, name: str, seed: int = 0, size: int = 32):
        from mmssl.modalities.vision.synthetic import CLASSES, generate_shapes

        split = generate_shapes(per_class, 0, size=size, seed=seed)["train"]
        self.images = torch.from_numpy(split["image"]).permute(0, 3, 1, 2).contiguous()  # (n, 3, S, S) uint8
        self.labels = torch.from_numpy(split["label"])
        self.name, self.vocab = name, list(CLASSES)


class TiedBars(NamedImages):
    """n images whose class is the orientation of their bars (BarImages' geometry: 0 horizontal, 1 vertical,
    2 and 3 the diagonals), painted so that colour follows shape without naming it: all bars of an image
    share one of 4 lightness levels l (CIE L 30, 45, 60, 75) and one of 4 hues h (a quarter turn apart in
    the (a, b) plane) tied through the orientation c by h = (c + l) mod 4. The level is drawn at random, so
    neither the hue nor the lightness names the class alone; the background is a random colour whose
    lightness and (a, b) are drawn apart (so neither predicts the other)."""

    def __init__(self, n: int, name: str, seed: int = 0, size: int = 32, bars: int = 3, chroma: float = 50.0):
        from mmssl.objectives.colorization import lab_to_rgb

        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        on = bar_masks(self.labels, size, bars, g)  # (n, S, S)
        level = torch.randint(0, 4, (n,), generator=g)
        hue = (((self.labels + level) % 4).float() * 90).deg2rad()[:, None, None]
        bar_lab = torch.stack([(30 + 15 * level.float())[:, None, None], chroma * hue.cos(), chroma * hue.sin()], 1)
        u = torch.rand(n, 3, 1, 1, generator=g)
        bg_lab = torch.cat([35 + 30 * u[:, :1], 80 * (u[:, 1:] - 0.5)], 1)  # L in [35, 65], a and b in [-40, 40]
        rgb = torch.where(on[:, None], lab_to_rgb(bar_lab), lab_to_rgb(bg_lab))  # (n, 3, S, S)
        self.images = (rgb * 255).round().to(torch.uint8)
        self.name, self.vocab = name, ["horizontal", "vertical", "diagonal", "anti-diagonal"]
