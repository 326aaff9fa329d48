"""Speed and memory of label propagation at DAVIS resolution.

    python benchmarks/track_speed.py [--frames 30] [--height 480 --width 854]
                                     [--context 20 --topk 10 --radius 12] [--tile 16] [--no-encoder]

Random stride-8 features (D = 256, the width of CRW's ResNet-18 res4 at stride 8) for a video
with 3 objects, propagated with ``mmssl.evaluation.propagation.propagate``; then the same with a
randomly initialised ResNet-18 cut after layer3 (layer3 at stride 1, so stride 8 and 256 channels,
as in CRW, arXiv:2006.14613) computing each frame's features inside the loop. Prints frames/s and
the peak resident memory of the process.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.evaluation.propagation import propagate

STRIDE, DIM = 8, 256


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def first_labels(height: int, width: int, objects: int = 3) -> torch.Tensor:
    """Three overlapping discs, ids 1..3, on background 0: (H, W) int64."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    labels = torch.zeros(height, width, dtype=torch.long)
    for i in range(objects):
        cy, cx, r = height * (0.3 + 0.2 * i), width * (0.25 + 0.25 * i), min(height, width) * 0.15
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i + 1
    return labels


def resnet18_stride8() -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.layer3[0].conv1.stride = (1, 1)  # keep layer3 at stride 8: 256 channels, a denser map
    net.layer3[0].downsample[0].stride = (1, 1)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3).eval()


def run(label: str, features, labels: torch.Tensor, frames: int, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = propagate(features, labels, context=args.context, topk=args.topk, radius=args.radius,
                    temperature=args.temperature, num_frames=frames, tile=args.tile)
    seconds = time.perf_counter() - start
    assert out.shape == (frames, *labels.shape)
    print(f"{label:<34} {frames - 1:4d} frames in {seconds:7.2f} s  {(frames - 1) / seconds:7.2f} frames/s  "
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
    def random_features(i: int) -> torch.Tensor:
        return torch.randn(DIM, h, w, generator=torch.Generator().manual_seed(i))

    run("propagation (random features)", random_features, labels, args.frames, args)
    if args.no_encoder:
        return
    encoder = resnet18_stride8()
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
