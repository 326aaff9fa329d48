"""Random-clip reading speed of each video backend.

    python benchmarks/video_io.py [--clips 50] [--clip-len 16] [--stride 2] [--size 128|480]
                                  [--frames 300] [--keyframe-every 60]

Writes a test video to a temporary folder: ``--frames`` frames of a demo scene
(``mmssl.modalities.video.render_scene``) at 30 fps, 128x128 or upscaled to 480x854, H.264
(libx264, crf 18, yuv420p) with a keyframe every ``--keyframe-every`` frames (YouTube-like
footage has one every 2-5 s; the random-access cost of a clip grows with the distance to the
previous keyframe). Then, for each available backend, reads ``--clips`` random clips of
``--clip-len`` frames ``--stride`` apart (``clip_indices`` with a seeded generator, so every
backend reads the same clips), two ways:

  open per clip   a new VideoReader for every clip, as a DataLoader worker reading a dataset does
  reader kept     one VideoReader for all clips (also reports how much the resident memory grew)

Every backend decodes with one thread. Prints a table and one JSON line. The measuring code is
``mmssl.bench.video`` (``python -m mmssl bench --tasks clip_loading`` runs the same reading).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mmssl.bench.video import clip_reading, make_video
from mmssl.modalities.video import available_backends, clip_indices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=50)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--size", type=int, default=128, choices=(128, 480))
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--keyframe-every", type=int, default=60)
    args = p.parse_args()
    torch.set_num_threads(1)  # the upscaling only; decoders are single-threaded by the reader

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        start = time.perf_counter()
        H, W = make_video(path, args.frames, args.size, args.keyframe_every)
        print(f"test video: {args.frames} frames {H}x{W} at 30 fps, keyframe every {args.keyframe_every}, "
              f"{path.stat().st_size / 2**20:.1f} MB, written in {time.perf_counter() - start:.1f} s")
        gen = torch.Generator().manual_seed(0)
        clips = [clip_indices(args.frames, args.clip_len, args.stride, gen) for _ in range(args.clips)]
        results = {b: clip_reading(path, b, clips) for b in available_backends()}

    print(f"\n{args.clips} random clips of {args.clip_len} frames at stride {args.stride}, one decoding thread")
    print(f"{'backend':<12}{'clips/s (open per clip)':>25}{'ms/clip':>10}{'clips/s (reader kept)':>24}"
          f"{'RSS growth MB':>16}")
    for b, r in results.items():
        print(f"{b:<12}{r['clips_per_s_open_per_clip']:>25.1f}{r['ms_per_clip_open_per_clip']:>10.1f}"
              f"{r['clips_per_s_reader_kept']:>24.1f}{r['rss_growth_mb_reader_kept']:>16.1f}")
    print(json.dumps({"video": {"frames": args.frames, "height": H, "width": W, "fps": 30,
                                "keyframe_every": args.keyframe_every},
                      "clips": args.clips, "clip_len": args.clip_len, "stride": args.stride, "results": results}))


if __name__ == "__main__":
    main()
