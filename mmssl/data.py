"""Deterministic, resumable batching shared by every task.

A run's data stream is a pure function of (seed, global batch index): epoch e
shuffles with a generator seeded by (seed, e), global batch g takes the next
``processes * batch_size`` items, and process r keeps its contiguous slice.
Every item carries its own seed, so random crops and augmentations do not
depend on worker scheduling, process count or where a run was resumed. Hence
two processes see exactly the samples one process would see for the same
global batch, and a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mmssl.errors import DataError


def sample_seed(seed: int, global_batch: int, slot: int, global_size: int) -> int:
    return (seed * 1_000_003 + global_batch * global_size + slot) % (2**63 - 1)


class StepBatchSampler(Sampler):
    """Yields, forever, this process's list of ``(index, sample_seed)`` for each global batch."""

    def __init__(self, num_items: int, batch_size: int, world: int, rank: int, seed: int, start_batch: int = 0):
        self.n, self.batch_size, self.world, self.rank = num_items, batch_size, world, rank
        self.seed, self.start_batch = seed, start_batch
        self.global_size = batch_size * world
        if num_items < self.global_size:
            raise DataError(
                f"the dataset has {num_items} items, fewer than one global batch of {self.global_size} "
                f"({world} process(es) x batch_size {batch_size}); lower batch_size"
            )
        self.per_epoch = num_items // self.global_size  # drop_last: every batch is full
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's shuffled order, drawn once per epoch rather than once per batch."""
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def batch(self, g: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(g, self.per_epoch)
        perm = self.permutation(epoch)
        start = pos * self.global_size + self.rank * self.batch_size
        return [
            (int(perm[start + j]), sample_seed(self.seed, g, self.rank * self.batch_size + j, self.global_size))
            for j in range(self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = self.start_batch
        while True:
            yield self.batch(g)
            g += 1


class SeededItems(Dataset):
    """``dataset[(i, seed)]`` -> ``transform(source[i], torch.Generator seeded with seed)`` plus
    ``"index": i``, the item's global index in the source, so every collated batch carries its
    samples' indices (B,) (instance discrimination keeps one memory entry per image). A transform
    that sets its own ``"index"`` (a replacement for an unreadable video) keeps it."""

    def __init__(self, source: Any, transform: Callable[[Any, torch.Generator], dict]):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        return {"index": index, **self.transform(self.source[index], torch.Generator().manual_seed(seed))}


class ThenApply:
    """A collate function followed by ``fn`` on the collated batch, without gradients."""

    def __init__(self, collate: Callable[[list], Any], fn: Callable[[Any], Any]):
        self.collate, self.fn = collate, fn

    def __call__(self, items: list) -> Any:
        with torch.no_grad():
            return self.fn(self.collate(items))


def train_loader(
    source: Any,
    transform: Callable[[Any, torch.Generator], dict],
    batch_size: int,
    world: int,
    rank: int,
    seed: int,
    start_batch: int = 0,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    batch_fn: Callable[[dict], dict] | None = None,
) -> DataLoader:
    """An endless loader of this process's share of every global batch, from ``start_batch`` on.
    ``batch_fn``, when given, maps each collated batch in the worker that collated it."""
    sampler = StepBatchSampler(len(source), batch_size, world, rank, seed, start_batch)
    if batch_fn is not None:
        collate_fn = ThenApply(collate_fn or default_collate, batch_fn)
    return DataLoader(
        SeededItems(source, transform),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
        # Worker seeds come from this generator, not the global RNG, so creating the
        # iterator after a resume does not shift the global random stream.
        generator=torch.Generator().manual_seed(seed),
    )


class GatheredBatches:
    """The stream ``train_loader`` yields, for a source whose items are held in memory as stacked
    tensors: ``items[k][i]`` is item i's ``k`` as the per-item transform would return it, less its
    random draws, which ``draw(seeds)`` makes for a batch's list of sample seeds. Each batch is
    gathered by index in the calling process (no workers, no per-item Python), and equals the
    collated batch of ``train_loader`` over the same items: {"index": (B,), items' keys, draw's keys}."""

    def __init__(self, items: dict[str, torch.Tensor], draw: Callable[[list[int]], dict[str, torch.Tensor]],
                 batch_size: int, world: int, rank: int, seed: int, start_batch: int = 0):
        sizes = {len(v) for v in items.values()}
        if len(sizes) != 1:
            raise ValueError(f"the held items' tensors disagree on the number of items: {sorted(sizes)}")
        self.items, self.draw = items, draw
        self.batch_sampler = StepBatchSampler(sizes.pop(), batch_size, world, rank, seed, start_batch)

    def __iter__(self) -> Iterator[dict]:
        for pairs in self.batch_sampler:
            index = torch.tensor([i for i, _ in pairs], dtype=torch.long)
            yield {"index": index, **{k: v[index] for k, v in self.items.items()}, **self.draw([s for _, s in pairs])}


class HeldOut:
    """A deterministic 80/20 split of one source, for datasets without a test split."""

    def __init__(self, source: Any, keep_test: bool):
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(0)).tolist()
        cut = len(order) * 4 // 5
        self.rows = order[cut:] if keep_test else order[:cut]
        self.source = source
        self.name = f"{getattr(source, 'name', 'data')} ({'held-out 20%' if keep_test else '80%'})"

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.rows[i]]

    def __getattr__(self, name: str) -> Any:  # vocab, num_classes, ... of the underlying source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


def train_and_test(open_split: Callable[[str, list | None], Any], split: str, eval_split: str | None) -> tuple[Any, Any]:
    """Labelled (train, test) sources for the probes: ``open_split(name, vocab)`` of ``split`` and
    of ``eval_split`` (default "test", read with train's label vocabulary, so a label keeps its
    index); a dataset without that split gives the 80 / 20 ``HeldOut`` halves of train instead,
    unless ``eval_split`` was named."""
    train = open_split(split, None)
    try:
        test = open_split(eval_split or "test", getattr(train, "vocab", None))
    except DataError:
        if eval_split:
            raise
        return HeldOut(train, keep_test=False), HeldOut(train, keep_test=True)
    return train, test
