"""mmssl.host_memory: freed tensors' memory stays in the process (glibc), unless the user tuned malloc."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# In a fresh interpreter: allocate and free an 8 MiB tensor, reading glibc's mallinfo2 (bytes in
# mmapped blocks while it lives; free bytes the heap gains when it is freed).
PROBE = """
import ctypes, json, sys
import torch
from mmssl.host_memory import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2()
x = torch.ones(2 << 20)  # 8 MiB of float32
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(json.dumps({"kept": kept, "mapped_mb": (during.hblkhd - before.hblkhd) / 2**20,
                  "free_kept_mb": (after.fordblks - during.fordblks) / 2**20}))
"""


def probe(mode: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(done.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.environ.get("LD_PRELOAD"),
                                reason="glibc's malloc only")


def test_freed_blocks_stay_in_the_heap():
    default = probe("default")
    # glibc's default: a block this large is a fresh mapping, unmapped again when freed
    assert default["mapped_mb"] >= 8 and default["free_kept_mb"] < 1
    kept = probe("keep")
    assert kept["kept"] is True
    assert kept["mapped_mb"] < 1 and kept["free_kept_mb"] >= 8  # served by the heap, kept there when freed


def test_a_users_own_malloc_settings_are_left_alone():
    tuned = probe("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert tuned["kept"] is False
    assert tuned["mapped_mb"] >= 8  # the user's settings, not ours
