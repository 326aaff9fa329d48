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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl.errors import DataError
from mmssl.sources import cache_dir, check_columns, local_root, map_labels, open_split, resolve_paths

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


class HFImages:
    """A map-style ``datasets`` split read as images, labels mapped to 0..C-1.

    Files that fail a header scan are skipped (and counted in one warning); an image
    that fails later is replaced by the next readable one with a warning that names it,
    so training never dies inside a worker.
    """

    def __init__(self, ds: Any, spec: str, image_column: str, label_column: str | None, vocab: list | None = None):
        import datasets

        check_columns(ds, spec, **{"--image-column": image_column, "--label-column": label_column})
        ds = resolve_paths(ds, image_column, local_root(spec))  # a table of paths relative to its folder
        try:  # also turns a column of paths or raw bytes into {"bytes", "path"} values
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        except Exception as e:  # noqa: BLE001  datasets raises many types; one line
            raise DataError(f"{spec}: column '{image_column}' does not hold images ({str(e).splitlines()[0][:120]})") from None
        self.ds, self.image_column, self.label_column, self.name = ds, image_column, label_column, spec
        self.labels, self.vocab, self.num_classes = None, None, None
        if label_column is not None:
            self.labels, self.vocab = map_labels(ds, label_column, vocab)
            self.num_classes = len(self.vocab)
        self.rows = self._scan()

    def _scan(self) -> list[int]:
        import pyarrow.compute as pc
        from PIL import Image

        n = len(self.ds)
        if n > SCAN_LIMIT:
            return list(range(n))
        # Arrow, not Python objects: only the paths are materialised, never the embedded bytes.
        column = self.ds.with_format("arrow")[self.image_column]
        paths = pc.struct_field(column, "path").to_pylist()
        has_bytes = pc.is_valid(pc.struct_field(column, "bytes")).to_pylist()
        rows, self.skipped = [], []
        for i, (path, embedded) in enumerate(zip(paths, has_bytes)):
            if not embedded and path:
                try:  # a cheap header check catches non-images, empty and missing files up front
                    with Image.open(path):
                        pass
                except Exception as e:  # noqa: BLE001  any failure to open skips the file
                    self.skipped.append(f"{Path(path).name} ({type(e).__name__})")
                    continue
            rows.append(i)
        listing = "; ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        if not rows:
            raise DataError(f"{self.name}: none of its {n} images can be read: {listing}")
        if self.skipped:
            warnings.warn(f"{self.name}: skipped {len(self.skipped)} of {n} images that cannot be read: {listing}",
                          stacklevel=3)
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        for attempt in range(len(self.rows)):
            row = self.rows[(i + attempt) % len(self.rows)]
            try:
                image = decode(self.ds[row][self.image_column])
            except ImageReadError as e:
                warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
                continue
            label = int(self.labels[row]) if self.labels is not None else -1
            return {"image": image, "label": label, "name": f"{self.name}[{row}]"}
        raise DataError(f"{self.name}: none of its {len(self.rows)} images can be read")



def open_images(spec: str, split: str, config: str | None = None, image_column: str = "image",
                label_column: str | None = None, vocab: list | None = None) -> DemoImages | HFImages:
    """``--dataset`` value -> an image source for ``split``: "demo", a Hub id, a local imagefolder
    (class subfolders give a ``label`` column; pass label_column="label" to use it) or a
    ``save_to_disk`` folder. ``source[i]`` -> {"image": uint8 (3, H, W), "label": int, "name": str}."""
    if spec == "demo":
        return demo_images(split)
    ds = open_split(spec, split, config=config, folder_builder="imagefolder")
    return HFImages(ds, spec, image_column, label_column, vocab)
