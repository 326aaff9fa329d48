"""Video sources: the embedded demo, local folders of videos, DAVIS-2017 roots and Hugging Face
datasets, plus the clip readers the training transforms call.

A source is map-style: ``source[i]`` -> {"video", "views", "name", "index"[, "label"]}, where a
video is a path, the bytes of a video file, or a list of frame image paths, and "views" holds one
such video per synchronised camera ("video" is the first). Nothing is decoded when an item is
fetched; ``read_clip`` / ``read_views`` decode the frames a clip needs.

Broken videos are found twice. When a source opens, every video (up to SCAN_LIMIT of them) is
opened and its last frame decoded, which catches files that are not videos and files cut short;
those are left out, listed in ``source.skipped`` and named in one warning. A video that still
fails later, in a DataLoader worker, is replaced by another item by ``SafeClips``.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl.errors import DataError
from mmssl.modalities.video.reader import VideoReader, VideoReadError
from mmssl.modalities.video.sampler import clip_indices
from mmssl.sources import (
    check_columns,
    is_saved_dataset,
    is_table_folder,
    local_root,
    map_labels,
    open_split,
    resolve_paths,
)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIEW_PREFIXES = ("cam", "view")  # two or more videos named cam* / view* in one folder are one multi-view item
SPLIT_FOLDERS = ("train", "test", "val", "validation")
SCAN_LIMIT = 2_000  # larger datasets skip the up-front decode check and rely on SafeClips
_SCANNED: dict[tuple, tuple] = {}  # (path, mtime, size, backend) -> _check's answer: this process only


# DAVIS-2017 ---------------------------------------------------------------------------------------

def davis_palette() -> list[int]:
    """The PASCAL VOC / DAVIS label palette as 768 ints (R, G, B for indices 0..255): the bits of
    the index are spread over the channels from the most significant bit down, so 0 is black,
    1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), 4 (0, 0, 128), ..."""
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for c in range(3):
                rgb[c] |= ((i >> (3 * bit + c)) & 1) << (7 - bit)
        palette.extend(rgb)
    return palette


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


# sources ------------------------------------------------------------------------------------------

def _check(video: Any, backend: str) -> tuple[str | None, tuple[int, int] | None, int]:
    """(why ``video`` cannot be used or None, its frame size, its frame count): it must open and its
    last frame decode."""
    key = None
    if isinstance(video, (str, os.PathLike)):
        try:
            st = os.stat(video)
        except OSError:
            return "no such file", None, 0
        key = (str(video), st.st_mtime_ns, st.st_size, backend)
        if key in _SCANNED:
            return _SCANNED[key]
    try:
        with VideoReader(video, backend) as r:
            result = None, tuple(r.get_batch([r.num_frames - 1]).shape[-2:]), r.num_frames
    except VideoReadError as e:
        result = str(e).split(": ", 1)[-1], None, 0
    if key is not None:
        _SCANNED[key] = result
    return result


class VideoSource:
    """Base of the map-style video sources; subclasses give ``_entry(k)`` -> (name, views, label)
    for their ``count`` entries. Attributes: ``name``, ``num_views``, ``skipped``, ``vocab``,
    ``num_classes``."""

    name: str
    vocab: list | None = None
    num_classes: int | None = None

    def _open(self, count: int, backend: str, scan: bool) -> None:
        self.skipped: list[str] = []
        reasons = []
        self.rows = list(range(count))
        self._frames: dict[int, int] = {}  # entry -> frames (the shortest view's), where known
        if scan and count <= SCAN_LIMIT:
            self.rows = []
            for k in range(count):
                name, views, _ = self._entry(k)
                why, sizes, frames = None, set(), []
                for v in views:
                    why, size, n = _check(v, backend)
                    if why:
                        break
                    sizes.add(size)
                    frames.append(n)
                if why is None and len(sizes) > 1:  # synchronised views are stacked: they must match in size
                    why = "its views differ in frame size"
                if why:
                    self.skipped.append(name)
                    reasons.append(why)
                else:
                    self.rows.append(k)
                    self._frames[k] = min(frames)
            if self.skipped:
                listing = (", ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else "")
                           + f" (first error: {reasons[0][:160]})")
                if not self.rows:
                    raise DataError(f"{self.name}: none of its {count} videos can be decoded: {listing}")
                warnings.warn(f"{self.name}: skipped {len(self.skipped)} of {count} videos that could not be "
                              f"decoded: {listing}", stacklevel=3)
        if not self.rows:
            raise DataError(f"{self.name}: no videos")

    def _entry(self, k: int) -> tuple[str, list, int | None]:
        raise NotImplementedError

    def num_frames(self, i: int) -> int | None:
        """Frames of item ``i`` (its shortest view), when the open-time check or a frame list told."""
        k = self.rows[i]
        if k in self._frames:
            return self._frames[k]
        views = self._entry(k)[1]
        return min(len(v) for v in views) if all(isinstance(v, list) for v in views) else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        name, views, label = self._entry(self.rows[i])
        item = {"video": views[0], "views": views, "name": name, "index": i}
        if label is not None:
            item["label"] = label
        return item


class VideoFiles(VideoSource):
    """Videos known by path: the demo, a local folder, a DAVIS root (frame lists)."""

    def __init__(self, name: str, entries: list[tuple[str, list]], labels: list[int] | None = None,
                 vocab: list | None = None, backend: str = "auto", scan: bool = True):
        self.name, self.entries, self.labels = name, entries, labels
        self.vocab, self.num_classes = vocab, len(vocab) if vocab is not None else None
        self._open(len(entries), backend, scan)
        self.num_views = max(len(entries[k][1]) for k in self.rows)

    def _entry(self, k: int) -> tuple[str, list, int | None]:
        name, views = self.entries[k]
        return name, views, self.labels[k] if self.labels is not None else None


class HFVideos(VideoSource):
    """A map-style ``datasets`` split whose ``video_column`` holds a path, bytes or {"path", "bytes"}."""

    def __init__(self, ds: Any, spec: str, video_column: str, label_column: str | None, backend: str = "auto",
                 vocab: list | None = None):
        import datasets

        check_columns(ds, spec, **{"--video-column": video_column, "--label-column": label_column})
        ds = resolve_paths(ds, video_column, local_root(spec))  # a table of paths relative to its folder
        if isinstance(ds.features.get(video_column), datasets.Video):
            ds = ds.cast_column(video_column, datasets.Video(decode=False))  # we decode; datasets must not
        self.ds, self.video_column, self.name = ds, video_column, spec
        self.labels, self.num_views = None, 1
        if label_column is not None:
            self.labels, self.vocab = map_labels(ds, label_column, vocab)
            self.num_classes = len(self.vocab)
        self._open(len(ds), backend, scan=True)

    def _entry(self, k: int) -> tuple[str, list, int | None]:
        value = self.ds[k][self.video_column]
        if isinstance(value, dict):
            video = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        else:
            video = value
        if not isinstance(video, (str, bytes, bytearray)):
            raise DataError(f"{self.name}: row {k} of column '{self.video_column}' holds "
                            f"{type(value).__name__}, not a video path or bytes")
        if isinstance(video, str):
            name = video
        else:  # embedded bytes: the row, and the file name they came from when datasets kept it
            path = value.get("path") if isinstance(value, dict) else None
            name = f"{self.name}[{k}]" + (f" ({Path(path).name})" if path else "")
        return name, [video], int(self.labels[k]) if self.labels is not None else None



def _folder_entries(base: Path) -> list[tuple[str, list[Path]]]:
    """(name, views) for every video under ``base``: cam* / view* videos sharing a folder form one
    multi-view item named after the folder; any other video is an item of its own."""
    videos: dict[Path, list[Path]] = {}
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if p.suffix.lower() in VIDEO_EXTENSIONS and not any(part.startswith(".") for part in rel.parts) and p.is_file():
            videos.setdefault(p.parent, []).append(p)
    entries = []
    for folder, files in sorted(videos.items()):
        cams = [f for f in files if f.stem.lower().startswith(VIEW_PREFIXES)]
        if len(cams) >= 2:
            rel = folder.relative_to(base)
            entries.append((rel.as_posix() if rel.parts else folder.name, cams))
            files = [f for f in files if f not in cams]
        entries.extend((f.relative_to(base).as_posix(), [f]) for f in files)
    return entries


def _local_folder(root: Path, spec: str, split: str, label_column: str | None, backend: str,
                  name: str | None = None, vocab: list | None = None) -> VideoFiles:
    base = root / split
    if not base.is_dir():
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in SPLIT_FOLDERS)
        if splits:
            raise DataError(f"{spec}: no split '{split}'; it has: {', '.join(splits)}")
        base = root
    entries = _folder_entries(base)
    if not entries:
        raise DataError(f"{spec}: no videos ({', '.join(e[1:] for e in VIDEO_EXTENSIONS)}) found in {base}")
    labels = None
    if label_column is not None:
        if label_column != "label":
            raise DataError(f"{spec}: a folder of videos has one label column, 'label' (its class subfolders), "
                            f"not '{label_column}'")
        classes = [Path(n).parts[0] if len(Path(n).parts) > 1 else None for n, _ in entries]
        if None in classes:
            raise DataError(f"{spec}: labels come from class subfolders, but {entries[classes.index(None)][0]} "
                            f"is not in one")
        vocab = list(vocab) if vocab is not None else sorted(set(classes))
        index = {c: i for i, c in enumerate(vocab)}
        labels = [index.get(c, -1) for c in classes]
    entries = [(n, [str(v) for v in views]) for n, views in entries]
    return VideoFiles(name or f"{spec}/{split}", entries, labels, vocab if labels is not None else None, backend)


def _davis_source(root: Path, spec: str, split: str, label_column: str | None) -> VideoFiles:
    if label_column is not None:
        raise DataError(f"{spec}: a DAVIS root has no labels (drop --label-column)")
    sets = root / "ImageSets" / "2017"
    if not (sets / f"{split}.txt").is_file() and split in ("test", "validation") and (sets / "val.txt").is_file():
        split = "val"  # DAVIS names its held-out sequences "val"
    davis = DavisRoot(root, split)
    entries = [(s, [[str(p) for p in davis.frame_paths(s)]]) for s in davis.sequences]
    if not entries:
        raise DataError(f"{spec}: ImageSets/2017/{split}.txt lists no sequences")
    return VideoFiles(f"{spec}/{split}", entries, scan=False)  # JPEG frames: checked when the root opened


def open_videos(spec: str, split: str, config: str | None = None, video_column: str = "video",
                label_column: str | None = None, backend: str = "auto", vocab: list | None = None) -> VideoSource:
    """``--dataset`` value -> a map-style video source for ``split``.

    spec: "demo" (the embedded two-camera videos, splits train / test), a local folder of videos
    (``<root>/<split>/`` when it exists, else everything under ``<root>``; class subfolders give
    labels with label_column="label"), a DAVIS-2017 root (its ImageSets/2017/<split>.txt sequences
    as frame lists), a folder of tables (parquet / arrow / csv / jsonl, e.g. a Hub snapshot; relative
    paths resolve against the folder), a ``save_to_disk`` folder or a Hub id (``video_column`` holds a path, bytes
    or {"path", "bytes"}). ``vocab``: the class names of another split (its training split), so
    label indices agree across splits; unknown classes become -1. ``backend``: the reader of the
    open-time check (see VideoReader).
    Returns: ``source[i]`` -> {"video": path | bytes | [frame paths], "views": [one per camera],
    "name": str, "index": i, "label": int (with label_column)}.
    """
    if spec == "demo":
        from mmssl.modalities.video.synthetic import demo_root

        if split not in ("train", "test"):
            raise DataError(f"the video demo has splits train, test, not '{split}'")
        if label_column is not None:
            raise DataError("the video demo has no labels (drop --label-column)")
        return _local_folder(demo_root() / "videos", spec, split, None, backend, name=f"demo/{split}")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"--dataset {spec}: expected a folder, found a file")
        if is_davis_root(path):
            return _davis_source(path, spec, split, label_column)
        if not (is_saved_dataset(path) or is_table_folder(path)):
            return _local_folder(path, spec, split, label_column, backend, vocab=vocab)
    ds = open_split(spec, split, config=config)
    return HFVideos(ds, spec, video_column, label_column, backend, vocab)


# reading clips ------------------------------------------------------------------------------------

def read_clip(video: Any, clip_len: int, stride: int, generator: torch.Generator, backend: str = "auto",
              name: str | None = None) -> dict:
    """A random clip of ``clip_len`` frames ``stride`` apart (see ``clip_indices``) from one video:
    a path, bytes, a list of frame paths or already decoded uint8 frames (T, 3, H, W). ``name``
    is what an error calls the video (default: its path).

    Returns:
        {"frames": uint8 (clip_len, 3, H, W), "indices": LongTensor (clip_len,), "num_frames": int}.
    """
    if isinstance(video, torch.Tensor):
        indices = clip_indices(video.shape[0], clip_len, stride, generator)
        return {"frames": video[indices], "indices": indices, "num_frames": video.shape[0]}
    with VideoReader(video, backend, name=name) as r:
        indices = clip_indices(r.num_frames, clip_len, stride, generator)
        return {"frames": r.get_batch(indices), "indices": indices, "num_frames": r.num_frames}


def read_views(item: dict, clip_len: int, stride: int, generator: torch.Generator, backend: str = "auto") -> dict:
    """The same frame indices from every view of ``item`` (synchronised cameras). Views may differ
    by a frame or two in length after encoding, so indices are drawn within the shortest.

    Returns:
        {"frames": uint8 (V, clip_len, 3, H, W), "indices": LongTensor (clip_len,)}.
    """
    views, name = item["views"], item.get("name")
    readers = []
    try:
        for j, v in enumerate(views):
            # a path names itself; bytes are named after the item and view
            readers.append(VideoReader(v, backend, name=None if isinstance(v, (str, os.PathLike)) or not name
                                       else f"{name} view {j}"))
        sizes = {r.size for r in readers}
        if len(sizes) > 1:
            raise VideoReadError(f"{name or readers[0].name}: views differ in frame size "
                                 f"({', '.join(f'{h}x{w}' for h, w in sorted(sizes))})")
        indices = clip_indices(min(r.num_frames for r in readers), clip_len, stride, generator)
        return {"frames": torch.stack([r.get_batch(indices) for r in readers]), "indices": indices}
    finally:
        for r in readers:
            r.close()


class VideoClips:
    """A video source read as clip slots: video k contributes ``clips[k]`` items per pass, so a few
    long videos fill batches as many short ones do.

    ``clips_per_video`` > 0 gives every video that many slots; 0 gives each as many as its frames
    hold, ``frames // span`` (at least 1; 1 where the frame count is unknown), ``span`` being the
    frames one clip covers. Item i is (video, slot) by a fixed table, so the sampler's
    determinism and resume guarantees carry over; a slot does not fix where its clip starts: the
    transform draws that from the item's own generator, as for any item.
    ``clips[i]`` -> the video's item with "index" = i, "video_index" and "clip_slot".
    """

    def __init__(self, source: Any, clips_per_video: int = 0, span: int = 1):
        if clips_per_video < 0 or span < 1:
            raise DataError(f"clips_per_video must be >= 0 (0: as many as the frames hold), got {clips_per_video}")
        self.source = source
        self.clips = []
        for k in range(len(source)):
            frames = source.num_frames(k) if hasattr(source, "num_frames") else None
            self.clips.append(clips_per_video if clips_per_video > 0 else max(1, (frames or 0) // span))
        self.starts = np.concatenate([[0], np.cumsum(self.clips)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def video_of(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right") - 1)

    def next_video(self, i: int) -> int:
        """The first slot of the video after item i's (wrapping): where a substitute for a broken video starts."""
        return int(self.starts[(self.video_of(i) + 1) % len(self.clips)])

    def __getitem__(self, i: int) -> dict:
        k = self.video_of(i)
        return {**self.source[k], "index": i, "video_index": k, "clip_slot": i - int(self.starts[k])}

    def __getattr__(self, name: str) -> Any:  # name, vocab, num_views, skipped, ... of the videos
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


class SafeClips:
    """A per-item transform that survives videos which fail to decode in a DataLoader worker.

    ``SafeClips(source, fn)(item, generator)`` returns ``fn(item, generator)``; when that raises a
    VideoReadError it warns (naming the file) and tries the next items of ``source`` in order,
    wrapping around, each with the generator rewound to its state on entry, so the substitute is
    the same on every run. After ``max_failures`` failures in a row it raises a DataError. An int
    may be passed instead of an item: ``source[index]`` is used.
    """

    def __init__(self, source: Sequence[dict], fn: Callable[[dict, torch.Generator], dict], max_failures: int = 8):
        self.source, self.fn, self.max_failures = source, fn, max_failures

    def __call__(self, item: dict | int, generator: torch.Generator) -> dict:
        if isinstance(item, int):
            item = self.source[item]
        position, state = int(item.get("index", 0)), generator.get_state()
        # clip slots of one video fail together: skip to the next video's
        after = getattr(self.source, "next_video", lambda i: (i + 1) % len(self.source))
        for attempt in range(self.max_failures):
            if attempt:
                item = self.source[position]
                generator.set_state(state)
            try:
                return self.fn(item, generator)
            except VideoReadError as e:
                error = e
                position = after(position)
                warnings.warn(f"{e}; using item {position} instead", stacklevel=2)
        raise DataError(f"{getattr(self.source, 'name', 'the dataset')}: {self.max_failures} videos in a row "
                        f"could not be decoded (last: {error})")
