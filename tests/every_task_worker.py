"""Run under ``torchrun --nproc_per_node 2``: train every registered task named on the command line
for two steps on a local folder, in this process group, one task after the other.

``python every_task_worker.py OUT TASK=FOLDER ...``; each task takes the smoke test's tiny settings
(``tests/unit/test_core.py``'s SMOKE). Rank 0 writes ``OUT/TASK.json``: the number of processes, the
logged losses, and the largest difference between any rank's trained weights and rank 0's.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "unit"))

import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState, GradientState, PartialState

from mmssl.registry import TASKS
from mmssl.run import resolve_config, run_training


def _checked_train(record: dict):
    """``mmssl.trainer.train``, recording after training how far apart the ranks' weights are (the largest
    absolute difference of any parameter from rank 0's), while the process group still stands."""
    from mmssl import trainer

    plain = trainer.train

    def train(task, cfg, accelerator, **kwargs):
        objective, accelerator = plain(task, cfg, accelerator, **kwargs)
        flat = torch.cat([p.detach().double().flatten() for p in accelerator.unwrap_model(objective).parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        gap = (flat - ref).abs().max()
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        record.update(world=dist.get_world_size(), weight_gap=gap.item(), params=flat.numel(),
                      buffers=_buffer_report(accelerator.unwrap_model(objective)))
        return objective, accelerator

    return train


def _buffer_report(objective) -> dict:
    """For each buffer the objective keeps out of DDP's per-forward broadcast (``unsynced_buffers``):
    whether it is ignored by DDP, and which of its rows (along the last dimension) differ from rank 0's."""
    buffers = dict(objective.named_buffers())
    ignored = set(getattr(objective, "_ddp_params_and_buffers_to_ignore", ()))
    report = {}
    for name in getattr(objective, "unsynced_buffers", ()):
        if name not in buffers:
            continue
        rows = buffers[name].detach().double().reshape(-1, buffers[name].shape[-1] if buffers[name].dim() else 1)
        ref = rows.clone()
        dist.broadcast(ref, src=0)
        differs = ((rows - ref).abs().amax(dim=1) > 0).double()
        dist.all_reduce(differs, op=dist.ReduceOp.MAX)
        report[name] = {"ignored": name in ignored, "rows": rows.shape[0], "rows_differing": int(differs.sum())}
    return report


def main(out: Path, jobs: list[str]) -> None:
    from test_core import SMOKE

    from mmssl import trainer

    # run_training ends with accelerator.end_training(), which destroys the process group. A second
    # group started in the same processes would rendezvous on the first one's keys in torchrun's
    # store and can connect to stale peers, so the group stands until every task has run.
    PartialState.destroy_process_group = lambda self, group=None: None
    for job in jobs:
        name, folder = job.split("=", 1)
        overrides = {k: v for k, v in SMOKE[name].items() if k != "dataset"}
        flags = {"output_dir": str(out / name), "dataset": folder, "max_steps": 2}
        if TASKS.get(name).modality != "video":  # class folders give imagefolder / audiofolder a label column
            flags["label_column"] = "label"
        task, cfg = resolve_config(name, None, flags,
                                   [f"{k}={v}" for k, v in overrides.items()] +
                                   ["evaluate=false", "monitor_every=0", "log_every=1", "save_every=1000"])
        record: dict = {}
        trainer.train = _checked_train(record)  # run_training imports it when called
        run_training(task, cfg)
        if int(os.environ["RANK"]) == 0:
            rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            (out / f"{name}.json").write_text(json.dumps({**record, "losses": [r["loss"] for r in rows]}))
        # the next task's Accelerator starts from a fresh state in the same process group
        AcceleratorState._reset_state()
        GradientState._reset_state()
    dist.destroy_process_group()
    # Every result is written and the group is gone: leave without the interpreter's teardown. Once, with
    # the machine loaded, a rank aborted there ("terminate called without an active exception") after all
    # of its training had finished; what this worker checks is the training, not native threads' exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
