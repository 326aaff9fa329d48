"""DAVIS-2017 semi-supervised roots: frames, palette PNG masks and split lists on disk."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mmssl.errors import DataError
from mmssl.evaluation.overlay import davis_palette

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_davis_root(path: str | os.PathLike) -> bool:
    """A DAVIS-2017 layout: JPEGImages/ and Annotations/ folders side by side."""
    root = Path(path).expanduser()
    return (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir()


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions and not p.name.startswith("."))


class DavisRoot:
    """A DAVIS-2017 semi-supervised root: ``JPEGImages/<res>/<seq>/*.jpg``, palette PNG masks in
    ``Annotations/<res>/<seq>/*.png`` and sequence lists ``ImageSets/2017/<split>.txt``.

    Masks exist for every frame (train / val) or only for the first frame (test-dev, where
    propagation starts from it); ``annotated(seq)`` says which frames have one.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", resolution: str = "480p"):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"DAVIS root {root}: no such folder")
        if not is_davis_root(self.root):
            raise DataError(f"{root} is not a DAVIS root: expected JPEGImages/{resolution} and "
                            f"Annotations/{resolution}")
        self.images, self.annotations = self.root / "JPEGImages" / resolution, self.root / "Annotations" / resolution
        sets = self.root / "ImageSets" / "2017"
        split_file = sets / f"{split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
            raise DataError(f"{root}: no split file ImageSets/2017/{split}.txt"
                            + (f"; splits: {', '.join(have)}" if have else ""))
        self.split = split
        self.sequences: list[str] = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        missing = [s for s in self.sequences if not (self.images / s).is_dir() or not (self.annotations / s).is_dir()]
        if missing:
            raise DataError(f"{root}: {len(missing)} sequence(s) listed in {split}.txt have no folder under "
                            f"JPEGImages/{resolution} or Annotations/{resolution}: {', '.join(missing[:5])}"
                            + (" ..." if len(missing) > 5 else ""))
        self._palette: list[int] | None = None

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict:
        name = self.sequences[i]
        return {"name": name, "frames": self.frames(name), "masks": self.masks(name)}

    def frame_paths(self, seq: str) -> list[Path]:
        paths = _image_files(self.images / seq, FRAME_EXTENSIONS)
        if not paths:
            raise DataError(f"{self.root}: sequence {seq} has no frames in {self.images / seq}")
        return paths

    def _annotation_paths(self, seq: str) -> tuple[list[int], list[Path]]:
        """(frame positions, PNG paths) of the annotated frames, checked against the frames."""
        frames = {p.stem: t for t, p in enumerate(self.frame_paths(seq))}
        pngs = _image_files(self.annotations / seq, (".png",))
        orphans = [p.name for p in pngs if p.stem not in frames]
        if orphans:
            raise DataError(f"{self.root}: sequence {seq} has annotations without a frame: {', '.join(orphans[:3])}")
        positions = [frames[p.stem] for p in pngs]
        # Dense (every frame, train / val) or sparse (the first frame, test-dev); anything in
        # between is a download with missing files.
        dense, sparse = len(pngs) == len(frames), 0 in positions and len(pngs) <= len(frames) // 2
        if not (dense or sparse):
            raise DataError(f"{self.root}: sequence {seq} has {len(frames)} frames but {len(pngs)} annotations "
                            f"(expected one per frame, or the first frame's only)")
        return positions, pngs

    def annotated(self, seq: str) -> list[int]:
        """Positions (0-based, in frame order) of the frames that have a mask."""
        return self._annotation_paths(seq)[0]

    def frames(self, seq: str) -> torch.Tensor:
        """uint8 (T, 3, H, W) RGB."""
        from PIL import Image

        out = []
        for p in self.frame_paths(seq):
            with Image.open(p) as img:
                out.append(np.asarray(img.convert("RGB")))
        if len({a.shape for a in out}) > 1:
            raise DataError(f"{self.root}: the frames of sequence {seq} differ in size")
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()

    def masks(self, seq: str) -> torch.Tensor:
        """uint8 (A, H, W) palette indices (0 background, 1..K objects) of the annotated frames
        (A = T for train / val sequences)."""
        from PIL import Image

        _, pngs = self._annotation_paths(seq)
        with Image.open(self.frame_paths(seq)[0]) as img:
            size = (img.height, img.width)
        out = []
        for p in pngs:
            with Image.open(p) as img:
                if img.mode not in ("P", "L"):
                    raise DataError(f"{p}: expected a palette PNG of object ids, found mode {img.mode}")
                a = np.array(img, dtype=np.uint8)
            if a.shape != size:
                raise DataError(f"{p}: mask is {a.shape[0]}x{a.shape[1]}, its frame {size[0]}x{size[1]}")
            out.append(a)
        return torch.from_numpy(np.stack(out))

    @property
    def palette(self) -> list[int]:
        """The palette of the first annotation (DAVIS's own when a PNG carries none)."""
        if self._palette is None:
            palette = None
            if self.sequences:
                from PIL import Image

                with Image.open(self._annotation_paths(self.sequences[0])[1][0]) as img:
                    palette = img.getpalette()
            self._palette = list(palette) if palette else davis_palette()
        return self._palette
