"""Reading clips: a random clip of one video, the same frames of every synchronised view, a
source read as clip slots, and the per-item transform that survives videos failing to decode in a
DataLoader worker."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mmssl.errors import DataError
from mmssl.modalities.video.reader import VideoReader, VideoReadError
from mmssl.modalities.video.sampler import clip_indices
from mmssl.unreadable import replaced


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
    VideoReadError it warns (naming the file, see ``mmssl.unreadable``) and tries the next items of
    ``source`` in order, wrapping around, each with the generator rewound to its state on entry, so the substitute is
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
                replaced(e, f"item {position}")
        raise DataError(f"{getattr(self.source, 'name', 'the dataset')}: {self.max_failures} videos in a row "
                        f"cannot be read (last: {error})")
