"""Image sources: the embedded demo shapes, Hugging Face datasets and local imagefolders.

Every source yields uint8 RGB tensors (3, H, W) at their stored size, an integer label
(-1 when unlabelled) and a name. Images are decoded here with PIL, not by ``datasets``, so a
broken file becomes a warning that names it instead of a crash in a DataLoader worker, and every
mode (grayscale, palette, RGBA, 16-bit) comes out as 8-bit RGB. Resizing and cropping are left to
the recipes in augment.py.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl.errors import DataError
from mmssl.media_table import MediaTable
from mmssl.sources import cache_dir, open_split

SCAN_LIMIT = 200_000  # larger datasets skip the up-front header scan (one open() per file is too slow)


class ImageReadError(DataError):
    pass


def decode(value: Any) -> torch.Tensor:
    """A ``datasets`` image value ({"bytes", "path"}), a path or raw bytes -> uint8 (3, H, W) RGB.
    Raises ImageReadError naming the file."""
    from PIL import Image, ImageOps

    if isinstance(value, (str, os.PathLike)):
        value = {"path": str(value), "bytes": None}
    elif isinstance(value, (bytes, bytearray)):
        value = {"path": None, "bytes": bytes(value)}
    value = value or {}
    data, path = value.get("bytes"), value.get("path")
    name = path or "<embedded image>"
    if data is None and not path:
        raise ImageReadError(f"{name}: neither bytes nor a path")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            img.load()  # open() reads only the header: a truncated file fails here
            img = ImageOps.exif_transpose(img)  # camera photos store their rotation in EXIF
            return torch.from_numpy(_to_rgb(img)).permute(2, 0, 1).contiguous()
    except Exception as e:  # noqa: BLE001  PIL raises many types; one named error
        raise ImageReadError(f"{Path(name).name if path else name}: unreadable image ({str(e)[:120]})") from None


def _to_rgb(img) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 3)."""
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # PIL's convert("RGB") clips these to 0..255, which turns a 16-bit image nearly white:
        # rescale to 8 bits (16-bit integers / 257; floats in [0, 1] * 255) first.
        a = np.asarray(img, dtype=np.float32)
        top = 1.0 if img.mode == "F" and a.max(initial=0) <= 1.0 else 65535.0 if a.max(initial=0) > 255 else 255.0
        return np.repeat(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        # Composite over white: pixels with alpha 0 carry arbitrary colours that convert() would keep.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a copy: torch warns on read-only arrays


class DemoImages:
    """One split of the generated shapes (see synthetic.py): label = shape class."""

    def __init__(self, data: dict, name: str, vocab: list[str]):
        self.images, self.labels, self.name = data["image"], data["label"], name
        self.vocab, self.num_classes = vocab, len(vocab)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).contiguous()
        return {"image": image, "label": int(self.labels[i]), "name": f"{self.name}/{i}"}


def demo_images(split: str) -> DemoImages:
    """The embedded shapes set, generated once and cached."""
    from mmssl.modalities.vision.synthetic import CLASSES, load_demo_images

    data = load_demo_images(cache_dir() / "vision_demo")
    if split not in data:
        raise DataError(f"the image demo has splits {', '.join(data)}, not '{split}'")
    return DemoImages(data[split], f"demo/{split}", list(CLASSES))


class HFImages(MediaTable):
    """A map-style ``datasets`` split read as images, labels mapped to 0..C-1.

    Files that fail a header check are skipped (and counted in one warning); an image that fails
    later is replaced by the next readable one with a warning that names it, so training never
    dies inside a worker.
    """

    option, kind, noun, read_error, scan_limit = "--image-column", "images", "images", ImageReadError, SCAN_LIMIT

    def _cast(self, ds: Any, column: str) -> Any:
        import datasets

        return ds.cast_column(column, datasets.Image(decode=False))  # paths or raw bytes -> {"bytes", "path"}

    def _check(self, path: str) -> str | None:
        from PIL import Image

        try:  # a cheap header check catches non-images, empty and missing files up front
            with Image.open(path):
                return None
        except Exception as e:  # noqa: BLE001  any failure to open skips the file
            return type(e).__name__

    def _read(self, row: int) -> dict:
        return {"image": decode(self.ds[row][self.column]), "label": self.label(row), "name": f"{self.name}[{row}]"}


def open_images(spec: str, split: str, config: str | None = None, image_column: str = "image",
                label_column: str | None = None, vocab: list | None = None) -> DemoImages | HFImages:
    """``--dataset`` value -> an image source for ``split``: "demo", a Hub id, a local imagefolder
    (class subfolders give a ``label`` column; pass label_column="label" to use it) or a
    ``save_to_disk`` folder. ``source[i]`` -> {"image": uint8 (3, H, W), "label": int, "name": str}."""
    if spec == "demo":
        return demo_images(split)
    ds = open_split(spec, split, config=config, folder_builder="imagefolder")
    return HFImages(ds, spec, image_column, label_column, vocab)
