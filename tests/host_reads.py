"""Counts where library code reads a tensor's value on the host (a device sync on a GPU)."""

import contextlib
import sys
from pathlib import Path

import torch

import mmssl

_ROOT = str(Path(mmssl.__file__).parent)
_READS = ("item", "__bool__", "__int__", "__float__", "tolist")


def _counted(path: str) -> bool:
    # The data pipeline works on host tensors (in loader workers on real runs): not a device sync.
    return path.startswith(_ROOT) and not path.endswith("data.py") and "modalities" not in path


@contextlib.contextmanager
def host_reads():
    """Yields a list that collects (method, file, line) for each host read made from mmssl code."""
    calls: list[tuple[str, str, int]] = []
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            frame = sys._getframe(1)
            if _counted(frame.f_code.co_filename):
                calls.append((name, frame.f_code.co_filename, frame.f_lineno))
            return original(self, *args, **kwargs)
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
