"""Video sources: the embedded demo, local folders of videos, DAVIS-2017 roots and Hugging Face
datasets, opened by ``open_videos``.

A source is map-style: ``source[i]`` -> {"video", "views", "name", "index"[, "label"]}, where a
video is a path, the bytes of a video file, or a list of frame image paths, and "views" holds one
such video per synchronised camera ("video" is the first). Nothing is decoded when an item is
fetched; ``read_clip`` / ``read_views`` (clips.py) decode the frames a clip needs.

Broken videos are found twice. When a source opens, every video (up to SCAN_LIMIT of them) is
opened and its last frame decoded, which catches files that are not videos and files cut short;
those are left out, listed in ``source.skipped`` and named in one warning. A video that still
fails later, in a DataLoader worker, is replaced by another item by ``SafeClips`` (clips.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmssl.errors import DataError
from mmssl.media_table import open_column
from mmssl.modalities.video.davis import DavisRoot, is_davis_root
from mmssl.modalities.video.reader import VideoReader, VideoReadError
from mmssl.sources import is_saved_dataset, is_table_folder, open_split
from mmssl.unreadable import Unreadable

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
VIEW_PREFIXES = ("cam", "view")  # two or more videos named cam* / view* in one folder are one multi-view item
SPLIT_FOLDERS = ("train", "test", "val", "validation")
SCAN_LIMIT = 2_000  # larger datasets skip the up-front decode check and rely on SafeClips
_SCANNED: dict[tuple, tuple] = {}  # (path, mtime, size, backend) -> _check's answer: this process only


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
        unreadable = Unreadable(self.name, "videos")
        self.skipped = unreadable.names
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
                    unreadable.add(name, why)
                else:
                    self.rows.append(k)
                    self._frames[k] = min(frames)
            unreadable.report(count, stacklevel=4)
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

        def cast(ds: Any) -> Any:  # we decode; datasets must not
            if isinstance(ds.features.get(video_column), datasets.Video):
                return ds.cast_column(video_column, datasets.Video(decode=False))
            return ds

        ds, self.labels, vocab = open_column(ds, spec, video_column, "--video-column", label_column, vocab, cast,
                                             "videos")
        self.ds, self.video_column, self.name, self.num_views = ds, video_column, spec, 1
        if vocab is not None:
            self.vocab, self.num_classes = vocab, len(vocab)
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
