"""Meters for ``mmssl bench``: devices, peak memory, the matmul peak, FLOP counting and step timing."""
from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from mmssl.errors import MmsslError


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda`` or None (cuda where available); cuda without a GPU is a one-line error."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise MmsslError(f"--device must be cpu or cuda, not '{name}'")
    if name == "cuda" and not torch.cuda.is_available():
        raise MmsslError(f"--device cuda: no CUDA device is available (torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mb(field: str) -> float | None:
    """A ``Vm*`` line of /proc/self/status in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident memory of this process in MiB (0 where /proc is missing)."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of the process since it started (or since the last reset), in MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Tensors an earlier row freed stay in the heap, and a later row reusing them would not raise the
    RSS: its peak would hide what it allocated. After a trim a window starts from live memory only.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory over a window: CUDA's allocator peak on a GPU, the process's peak RSS on a CPU.

    ``getrusage`` cannot forget an earlier peak, so each window would inherit the largest one
    measured before it; on Linux writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the
    current RSS (after a heap trim), so each window sees its own. Where that fails the figure is the
    process's peak so far. ``memory_growth_mb`` is the peak less the memory in use when the window
    opened: on a CPU, what this side allocated while the other side's model was already resident.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            self.kind = "process peak RSS" if self._reset_rss() else "process peak RSS since start (getrusage)"
        self.before = self._now()

    def _reset_rss(self) -> bool:
        _release_free_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _now(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        return rss_mb()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()

    def figures(self) -> dict:
        peak = self.peak_mb()
        return {"peak_memory_mb": round(peak, 1), "memory_growth_mb": round(peak - self.before, 1),
                "memory_kind": self.kind}


def matmul_peak(device: torch.device) -> dict:
    """The best FLOP/s of square matrix products: fp32 on a CPU, bf16 on a GPU (the precisions
    the models run in), measured now so that utilisation shares the machine's current load."""
    # On a GPU one product takes about a millisecond, so each try times 10 to hide launch and sync costs.
    n, dtype, tries, reps = (8192, torch.bfloat16, 10, 10) if device.type == "cuda" else (2048, torch.float32, 5, 1)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    a @ b  # first-use allocations and kernel selection
    best = float("inf")
    for _ in range(tries):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return {"flops_per_s": 2 * n**3 / best, "dtype": str(dtype).removeprefix("torch."), "n": n, "tries": tries}


def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one that
# scaled_dot_product_attention dispatches to, whose attention products would count as zero.
_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``fn()`` runs (2 per multiply-add)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()



@dataclasses.dataclass
class Side:
    """One implementation under test: a model and the function that computes its loss on the fixed batch."""

    name: str
    module: nn.Module
    loss: Callable[[nn.Module], torch.Tensor]


def make_optimizer(module: nn.Module, device: torch.device, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The trainer's optimizer for both sides: fused AdamW (as transformers' Trainer also defaults to on torch >= 2.8)."""
    from mmssl.optim import make_optimizer as trainer_optimizer

    return trainer_optimizer([p for p in module.parameters() if p.requires_grad], device, lr, weight_decay)


def training_step(side: Side, optimizer: torch.optim.Optimizer, device: torch.device) -> Callable[[], None]:
    """One optimizer step as the trainer takes it: zero_grad, forward, backward, AdamW step."""
    side.module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        # bf16 autocast on a GPU, as `accelerate launch --mixed_precision bf16`; fp32 on a CPU
        with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext():
            loss = side.loss(side.module)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps, with the GPU's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start
