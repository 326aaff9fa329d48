"""Speed and memory of label propagation at DAVIS resolution.

    python benchmarks/track_speed.py [--frames 30] [--height 480 --width 854]
                                     [--context 20 --topk 10 --radius 12] [--tile 16] [--no-encoder]

Random stride-8 features (D = 256, the width of CRW's ResNet-18 res4 at stride 8) for a video
with 3 objects, propagated with ``mmssl.evaluation.propagation.propagate``; then the same with a
randomly initialised ResNet-18 cut after layer3 (mmssl's ``ResNet(out_stride=8)``: stride 8 and 256
channels, as in CRW, arXiv:2006.14613, with layer3 dilated) computing each frame's features inside
the loop. Prints frames/s and the peak resident memory of the process. The measuring code is
``mmssl.bench.video`` (``python -m mmssl bench --tasks tracking`` runs the first of the two, with
fewer frames).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mmssl.bench.meters import peak_rss_mb
from mmssl.bench.video import DIM, STRIDE, first_labels, propagation_speed, random_features, stride8_encoder


def run(label: str, features, labels: torch.Tensor, frames: int, args: argparse.Namespace) -> None:
    r = propagation_speed(features, labels, frames, context=args.context, topk=args.topk, radius=args.radius,
                          temperature=args.temperature, tile=args.tile)
    print(f"{label:<34} {r['frames']:4d} frames in {r['seconds']:7.2f} s  {r['frames_per_s']:7.2f} frames/s  "
          f"peak RSS {peak_rss_mb():7.0f} MB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--radius", type=float, default=12)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--tile", type=int, default=16)
    p.add_argument("--no-encoder", action="store_true", help="skip the run with a ResNet-18 in the loop")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    h, w = -(-args.height // STRIDE), -(-args.width // STRIDE)
    print(f"{args.frames} frames of {args.height}x{args.width}, features {DIM}x{h}x{w}, context {args.context}, "
          f"topk {args.topk}, radius {args.radius}, tile {args.tile}, {torch.get_num_threads()} threads")
    labels = first_labels(args.height, args.width)
    print(f"{'start':<34} peak RSS {peak_rss_mb():7.0f} MB")

    # Features made on demand: what the propagation itself holds is what is measured.
    run("propagation (random features)", random_features(args.height, args.width), labels, args.frames, args)
    if args.no_encoder:
        return
    encoder = stride8_encoder()
    video = torch.rand(args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def encoded(i: int) -> torch.Tensor:
        fmap = encoder(video[i : i + 1])[0]  # (256, ceil(H / 8), ceil(W / 8))
        return fmap if fmap.shape[-2:] == (h, w) else F.interpolate(fmap[None], size=(h, w), mode="bilinear")[0]

    encoded(0)  # warm-up
    start = time.perf_counter()
    for i in range(3):
        encoded(i)
    print(f"{'encoder alone':<34} {(time.perf_counter() - start) / 3:7.2f} s a frame")
    run("propagation + ResNet-18 encoder", encoded, labels, args.frames, args)


if __name__ == "__main__":
    main()
