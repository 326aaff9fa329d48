"""Counter-based random numbers: values that are a pure function of (seed, counter), computed for a
whole batch of seeds at once on any device.

Row n of ``hashed_bits(seeds, count)`` is ``mix32(a_n * c + b_n mod 2**32)`` for the counters
c = 0 .. count - 1, where (a_n odd, b_n) come from the row's seed by the same avalanche hash, so
distinct seeds give distinct affine maps and no two rows share a (shifted) stream. A row does not
depend on the batch it sits in, the device or the process: the integer arithmetic is exact in int64.
The views of every modality draw their per-sample randomness this way, so a batch's views are its
samples' views made one by one, whatever the workers, processes or resume point.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_HIGH = 0x85EBCA6B


def mul32(x: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
    """(x * c) mod 2**32 for x, c in [0, 2**32) held in int64, without int64 overflow: c is split
    into 16-bit halves, and the high half only matters through the low 16 bits of its product."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """An invertible 32-bit avalanche hash (the "lowbias32" constants of C. Wellons' hash prospector)
    on int64 tensors holding values in [0, 2**32); every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x ^= x >> 15
    x = mul32(x, 0x846CA68B)
    x ^= x >> 16
    return x


_MIXED_HIGH = int(mix32(torch.tensor(_HIGH)))  # cancels mix32(hi ^ _HIGH) when hi = 0


def row_keys(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative int64 seeds (N,) -> the rows' (a odd, b) in [0, 2**32), each (N, 1). Both
    32-bit halves of a seed count; a seed below 2**32 gives a = mix32(seed) | 1 and
    b = mix32(seed ^ 0x9E3779B9) (mix32(0) = 0 makes the high half's terms vanish)."""
    seeds = seeds.long().reshape(-1, 1)
    lo, hi = seeds & MASK32, (seeds >> 32) & MASK32
    a = mix32(lo ^ mix32(hi)) | 1
    b = mix32(lo ^ _GOLDEN ^ mix32(hi ^ _HIGH) ^ _MIXED_HIGH)
    return a, b


def hashed_bits(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """long (N,) seeds -> (N, count) int64 holding 32 random bits each, row n a function of seed n alone."""
    a, b = row_keys(seeds)
    counter = torch.arange(count, device=seeds.device, dtype=torch.long)
    return mix32((mul32(counter, a) + b) & MASK32)


def hashed_uniform(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """long (N,) seeds -> float64 (N, count) uniform in (0, 1) on a grid of 2**-32."""
    return (hashed_bits(seeds, count).double() + 0.5) * 2.0**-32
