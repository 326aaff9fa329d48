import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The demo corpus is generated once per test session into a shared cache.
os.environ.setdefault("MMSSL_CACHE", str(ROOT / ".pytest_cache" / "mmssl"))
# Under pytest-xdist each worker takes its share of the cores. Left alone, every worker's torch starts
# one thread per core, and on a 2-core machine two workers' spinning OpenMP threads stall each other
# for many times the work. Processes the tests launch inherit the share through OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = _share
    import torch

    torch.set_num_threads(int(_share))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its own Accelerator; accelerate keeps process-wide singletons."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def tiny_cpc(**extra):
    """Overrides that make cpc_audio run in a second on the CPU."""
    return {
        "batch_size": 4, "num_workers": 0, "encoder.cpc.channels": 16, "encoder.cpc.context_dim": 16, "crop_samples": 3200,
        "objective.steps": 3, "objective.num_negatives": 8, "warmup_steps": 2, "log_every": 1, "monitor_every": 0, **extra,
    }
