"""Training images decoded once and held in memory.

For a training set of small images (CIFAR-sized, the embedded shapes) decoding and collating every
item again at each step costs more than keeping the set: held as one uint8 tensor at the working
size, a batch is gathered by index in the training process (``mmssl.data.GatheredBatches``), with
no DataLoader workers competing with the training step for the cores. The batches are the ones the
workers would collate: the same images at the same working size, the same view seeds and indices.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mmssl.modalities.vision.augment import DecodeAndDraw, item_seed

CHUNK = 256  # items per decoding batch


def held_mib(num_items: int, size: int) -> float:
    """MiB that ``num_items`` images take held at ``size`` px: N x 3 x S x S bytes."""
    return num_items * 3 * size * size / 2**20


class _Resized(Dataset):
    def __init__(self, source: Any, decode: DecodeAndDraw, labels: bool):
        self.source, self.decode, self.labels = source, decode, labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        item = self.source[i]
        out = self.decode.resize(item["image"])
        return {**out, "label": item["label"]} if self.labels else out


def hold_images(source: Any, decode: DecodeAndDraw, labels: bool = False, num_workers: int = 0) -> dict[str, torch.Tensor]:
    """Every item of ``source`` decoded and resized by ``decode`` (in ``num_workers`` DataLoader
    workers) -> {"image": uint8 (N, 3, S, S), "source_size": int64 (N, 2)} plus "label": int64 (N,)
    with ``labels``. An unreadable file is replaced as in training (the source warns and names it)."""
    n, size = len(source), decode.size
    held = {"image": torch.empty(n, 3, size, size, dtype=torch.uint8),
            "source_size": torch.empty(n, 2, dtype=torch.long)}
    if labels:
        held["label"] = torch.empty(n, dtype=torch.long)
    # A generator of its own: a DataLoader seeds its workers from the global RNG otherwise, and a
    # resumed run, which builds its data after restoring that RNG, would draw on from a shifted stream.
    loader = DataLoader(_Resized(source, decode, labels), batch_size=CHUNK, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    for k, chunk in enumerate(loader):  # filled in place: the set is never held twice
        for key, value in chunk.items():
            held[key][k * CHUNK:k * CHUNK + len(value)] = value
    return held


def draw_view_seeds(seeds: list[int]) -> dict[str, torch.Tensor]:
    """A batch's sample seeds -> {"view_seed": int64 (B,)}: each the draw ``DecodeAndDraw`` makes
    from the item's generator."""
    return {"view_seed": torch.stack([item_seed(torch.Generator().manual_seed(s)) for s in seeds])}
