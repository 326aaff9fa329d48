"""Random access to the frames of one video, with decord, torchcodec or PyAV behind one interface.

``VideoReader(source).get_batch(indices)`` -> uint8 (T, 3, H, W) RGB in the order asked. A source
is a path, the raw bytes of a video file, or a list of image paths (a folder of frames, such as a
DAVIS sequence, read with PIL whatever the backend). Every backend decodes with one thread:
parallelism comes from DataLoader workers, and one thread per reader keeps N workers from
starting N x cores decoding threads. Any failure to open or decode becomes a VideoReadError whose
one-line message names the file.
"""
from __future__ import annotations

import bisect
import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from mmssl.errors import DataError

# In order of preference for backend="auto": torchcodec seeks to random clips faster than decord
# (`mmssl bench` measures it), but needs system FFmpeg; decord and PyAV carry their own.
BACKENDS = ("torchcodec", "decord", "pyav")
IMAGE_SEQUENCE_FPS = 24.0  # a folder of frames has no frame rate; DAVIS sequences were sampled at 24 fps
# decord grows its memory on repeated random access to one open reader (dmlc/decord#197, #208);
# after this many batches the reader is reopened, on top of the seek(0) after every batch.
DECORD_REOPEN_EVERY = 64


class VideoReadError(DataError):
    """A video that cannot be opened or decoded; the message names the file."""


def available_backends() -> list[str]:
    """The backends among BACKENDS that import and load their FFmpeg libraries here, best first."""
    return list(_importable())


@functools.cache
def _importable() -> tuple[str, ...]:
    found = []
    for name in BACKENDS:
        try:
            if name == "decord":
                import decord  # noqa: F401
            elif name == "torchcodec":
                from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads FFmpeg: fails without it)
            else:
                import av  # noqa: F401
        except (ImportError, OSError, RuntimeError):  # not installed, or a missing shared library
            continue
        found.append(name)
    return tuple(found)


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of video>"
    if isinstance(source, (list, tuple)):
        return str(Path(source[0]).parent) if source else "<empty frame list>"
    return f"<{type(source).__name__}>"


class VideoReader:
    """One open video.

    Args:
        source: a path (str / Path), the bytes of a video file, or a list of frame image paths.
        backend: "decord", "torchcodec", "pyav" or "auto" (the first of ``available_backends()``
            that opens the file). Ignored for a list of frames.
        name: what error messages call the video (default: the path, or a byte count).
    Properties: ``num_frames``, ``fps``, ``size`` = (H, W).
    """

    def __init__(self, source: str | os.PathLike | bytes | Sequence[str | os.PathLike], backend: str = "auto",
                 name: str | None = None):
        self.name = name or _describe(source)
        if isinstance(source, (list, tuple)):
            self.backend, self._impl = "frames", _run(self.name, lambda: _Frames([str(p) for p in source]))
            return
        if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
            raise TypeError(f"VideoReader: expected a path, bytes or a list of frame paths, "
                            f"not {type(source).__name__}")
        if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
            raise VideoReadError(f"{self.name}: no such file")
        if isinstance(source, bytearray):
            source = bytes(source)
        have = available_backends()
        if backend == "auto":
            if not have:
                raise DataError(f"no video backend works here: install one of {', '.join(BACKENDS)}")
            candidates = have
        elif backend not in BACKENDS:
            raise DataError(f"unknown video backend '{backend}'; choose one of auto, {', '.join(BACKENDS)}")
        elif backend not in have:
            raise DataError(f"video backend '{backend}' is not usable here; available: {', '.join(have) or 'none'}")
        else:
            candidates = [backend]
        self._source, self._fallbacks = source, list(candidates)
        self._open_next()

    def _open_next(self) -> None:
        """Open the next candidate backend. "auto" falls through to the next one when a backend
        cannot open or decode a file: one may lack a codec or container another has, and decord
        fails on some frame sizes (e.g. a 48 px wide H.264 stream) that FFmpeg-based readers decode."""
        first_error = None
        while self._fallbacks:
            candidate = self._fallbacks.pop(0)
            try:
                self._impl = _run(self.name, lambda opener=_OPENERS[candidate]: opener(self._source))
                self.backend = candidate
                return
            except VideoReadError as e:
                first_error = first_error or e
        raise first_error

    @property
    def num_frames(self) -> int:
        return self._impl.num_frames

    @property
    def fps(self) -> float:
        return self._impl.fps

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the decoded frames."""
        return _run(self.name, lambda: self._impl.size)

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) -> uint8 (len(indices), 3, H, W).

        Each distinct frame is decoded once, in ascending order (forward decoding is what all
        backends do fastest), then the result is put back into the order asked.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() == 0:
            H, W = self.size
            return torch.empty(0, 3, H, W, dtype=torch.uint8)
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_frames:
            raise IndexError(f"{self.name}: frame indices must be in [0, {self.num_frames}), got "
                             f"{int(idx.min())}..{int(idx.max())}")
        unique, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        while True:
            try:
                frames = _run(self.name, lambda: self._impl.read(unique.tolist()))
                break
            except VideoReadError:
                if not getattr(self, "_fallbacks", None):
                    raise
                self._impl.close()
                self._open_next()
        if frames.shape[0] != unique.numel():
            raise VideoReadError(f"{self.name}: decoded {frames.shape[0]} of {unique.numel()} requested frames")
        return frames[inverse]

    def close(self) -> None:
        impl, self._impl = getattr(self, "_impl", None), _Closed()
        if impl is not None:
            impl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({self.name!r}, backend={getattr(self, 'backend', None)!r})"


def _run(name: str, fn):
    """fn() with every decoder exception turned into a one-line VideoReadError naming the file."""
    try:
        return fn()
    except (VideoReadError, IndexError):
        raise
    except Exception as e:  # noqa: BLE001  decord, torchcodec, PyAV and PIL raise many unrelated types
        text = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
        raise VideoReadError(f"{name}: cannot decode video ({detail})") from None


class _Closed:
    def __getattr__(self, _):
        raise VideoReadError("the video reader is closed")


class _Decord:
    def __init__(self, source: str | bytes):
        self.source = source
        self._open()
        self.num_frames = len(self.vr)
        self.fps = float(self.vr.get_avg_fps())
        self._size = None

    def _open(self) -> None:
        import decord

        # decord takes a file-like object for in-memory videos (it copies the bytes once)
        uri = io.BytesIO(self.source) if isinstance(self.source, bytes) else str(self.source)
        self.vr = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=1)
        self.batches = 0

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:  # decord reports no frame size without decoding a frame
            self._size = tuple(self.read([0]).shape[-2:])
        return self._size

    def read(self, indices: list[int]) -> torch.Tensor:
        if self.batches >= DECORD_REOPEN_EVERY:
            self.vr = None
            self._open()
        # asnumpy + from_numpy, not decord.bridge.set_bridge("torch"): the bridge is process-wide state
        frames = torch.from_numpy(self.vr.get_batch(indices).asnumpy())  # (N, H, W, 3)
        # Memory guard (dmlc/decord#197, #208): decord keeps decoding state and buffers after a
        # random-access batch and its memory creeps up over many batches; seeking back to frame 0
        # after every batch releases them, and the reader is reopened every DECORD_REOPEN_EVERY batches.
        self.vr.seek(0)
        self.batches += 1
        self._size = tuple(frames.shape[1:3])
        return frames.permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        self.vr = None


class _TorchCodec:
    def __init__(self, source: str | bytes):
        from torchcodec.decoders import VideoDecoder

        # "exact" demuxes the whole file once at open, so frame counts and indices are right even
        # for containers whose header has no (or a wrong) frame count.
        self.dec = VideoDecoder(source if isinstance(source, bytes) else str(source), seek_mode="exact",
                                num_ffmpeg_threads=1, dimension_order="NCHW")
        meta = self.dec.metadata
        self.num_frames = int(meta.num_frames)
        self.fps = float(meta.average_fps or 0.0)
        self.size = (int(meta.height), int(meta.width))

    def read(self, indices: list[int]) -> torch.Tensor:
        return self.dec.get_frames_at(indices=indices).data.contiguous()

    def close(self) -> None:
        self.dec = None


class _PyAV:
    """Seek + decode with PyAV. The packets are demuxed once at open (no decoding) to learn every
    frame's presentation time and the keyframes, so frame i is the i-th smallest pts, as for the
    other backends, and a read only seeks when a keyframe lies between the decoder and the target."""

    def __init__(self, source: str | bytes):
        import av

        self.container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
        if not self.container.streams.video:
            raise VideoReadError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_count = 1
        packets = [(p.pts, p.is_keyframe) for p in self.container.demux(self.stream) if p.pts is not None and p.size]
        if not packets:
            raise VideoReadError("no frames")
        packets.sort()
        self.pts = [p for p, _ in packets]
        self.index = {p: i for i, p in enumerate(self.pts)}
        self.keyframes = [i for i, (_, key) in enumerate(packets) if key] or [0]
        self.num_frames = len(self.pts)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.size = (self.stream.codec_context.height, self.stream.codec_context.width)
        self._frames = None  # the decoder's output iterator, positioned after frame self._at
        self._at = None

    def _restart(self, target: int) -> None:
        key = self.keyframes[max(bisect.bisect_right(self.keyframes, target) - 1, 0)]
        self.container.seek(self.pts[key], stream=self.stream, backward=True, any_frame=False)
        self._frames, self._at = self.container.decode(self.stream), None

    def read(self, indices: list[int]) -> torch.Tensor:
        out = []
        for target in indices:
            # Decoding on from the current frame is cheaper than seeking, unless the target lies
            # behind it or a keyframe lies between the two.
            behind = self._at is None or self._at >= target
            if behind or bisect.bisect_right(self.keyframes, target) > bisect.bisect_right(self.keyframes, self._at):
                self._restart(target)
            frame = None
            for frame in self._frames:
                at = self.index.get(frame.pts)
                if at is None:
                    continue
                self._at = at
                if at >= target:
                    break
            if frame is None or self._at != target:  # the stream ended early or skipped the frame
                self._frames, self._at = None, None  # the next read starts with a fresh seek
                raise VideoReadError(f"frame {target} could not be decoded")
            out.append(torch.from_numpy(_reformat(frame, "rgb24").to_ndarray()))
        return torch.stack(out).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        self.container.close()


class _Frames:
    """A list of image files read as a video with PIL."""

    def __init__(self, paths: list[str]):
        from PIL import Image

        if not paths:
            raise VideoReadError("no frames")
        self.paths, self.num_frames, self.fps = paths, len(paths), IMAGE_SEQUENCE_FPS
        with Image.open(paths[0]) as img:
            self.size = (img.height, img.width)

    def read(self, indices: list[int]) -> torch.Tensor:
        from PIL import Image

        frames = []
        for i in indices:
            with Image.open(self.paths[i]) as img:
                frames.append(torch.from_numpy(np.array(img.convert("RGB"))))
        return torch.stack(frames).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        pass


_OPENERS = {"decord": _Decord, "torchcodec": _TorchCodec, "pyav": _PyAV}


def _reformat(frame: Any, fmt: str) -> Any:
    """A PyAV frame converted to pixel format ``fmt`` on one thread. PyAV >= 17 converts on several
    threads by default, which for frames this small costs more than it saves and, while other
    processes keep the cores busy, made it ~10x slower (measured); older PyAV has no ``threads``."""
    try:
        return frame.reformat(format=fmt, threads=1)
    except TypeError:
        return frame.reformat(format=fmt)


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray, fps: float = 10.0, crf: int = 18,
                keyframe_every: int = 8) -> Path:
    """Encode uint8 frames (T, 3, H, W) RGB as H.264 (yuv420p) with PyAV, in the container the
    suffix names (.mp4, .mkv, .mov); MPEG-4 part 2 at a high bit rate where this FFmpeg has no
    libx264. H and W must be even (4:2:0 chroma)."""
    import av

    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"write_video: expected uint8 frames (T, 3, H, W), got {tuple(frames.shape)} {frames.dtype}")
    T, _, H, W = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"write_video: frame size {H}x{W} must be even for yuv420p")
    path = Path(path)
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        if "libx264" in av.codecs_available:
            stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "g": str(keyframe_every)})
        else:
            stream = container.add_stream("mpeg4", rate=rate, options={"g": str(keyframe_every)})
            stream.bit_rate = 8 * H * W * round(fps)  # ~1 bit per pixel per frame: close to lossless
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        rgb = frames.permute(0, 2, 3, 1).contiguous().numpy()
        for t in range(T):
            frame = _reformat(av.VideoFrame.from_ndarray(rgb[t], format="rgb24"), "yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
