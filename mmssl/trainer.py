"""The training loop on Hugging Face Accelerate.

prepare -> task.before_step -> (micro-batches: forward, backward) -> clip -> step -> objective.after_step
-> log -> save_state. The learning rate is a pure function of the step, the
data stream a pure function of the global batch index (mmssl.data), so a run
resumed from ``DIR/checkpoints/step_N`` ends exactly where an uninterrupted run ends.
"""
from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from mmssl import config as config_lib
from mmssl.config import ConfigError
from mmssl.encoders.convert import init_objective
from mmssl.errors import TrainingError
from mmssl.objectives.base import Objective
from mmssl.optim import check_name as check_optimizer_name
from mmssl.optim import make_optimizer, warmup_cosine
from mmssl.task import Task


def lr_at(step: int, cfg: Any) -> float:
    """Linear warmup from 0 to ``cfg.lr`` over ``warmup_steps``, then cosine down to
    ``min_lr_ratio * lr`` at ``max_steps``. ``step`` counts optimizer steps from 0."""
    return warmup_cosine(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.lr * cfg.min_lr_ratio)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint: ``trainer_state.json`` is written after everything else."""
    done = sorted((out_dir / "checkpoints").glob("step_*/trainer_state.json"))
    return done[-1].parent if done else None


def _progress(start_wall: float, step: int, samples_per_step: int) -> dict[str, float]:
    """The x axes of a learning curve: wall seconds since the run started and samples seen."""
    return {"wall_s": round(time.perf_counter() - start_wall, 3), "samples": step * samples_per_step}


def _resumed_wall(out_dir: Path, step: int) -> float:
    """Wall seconds a resumed run had already spent: the last logged ``wall_s`` at or before ``step``."""
    log = out_dir / "metrics.jsonl"
    if step == 0 or not log.is_file():
        return 0.0
    walls = [row["wall_s"] for row in map(json.loads, log.read_text().splitlines())
             if "wall_s" in row and row.get("step", 0) <= step]
    return walls[-1] if walls else 0.0


def views_in_workers(cfg: Any) -> bool:
    """Whether ``task.on_device`` runs in the DataLoader workers (``cfg.view_placement``)."""
    if cfg.view_placement not in ("auto", "device", "workers"):
        raise ConfigError(f"view_placement must be auto, device or workers, not '{cfg.view_placement}'")
    # auto: on the device. On an accelerator the views are fast there and the workers ship uint8; on a
    # CPU the training step's threads already use every core, so views made in a worker compete with
    # them and the pipeline runs slower than with views made between steps (benchmarks/pipeline_speed.py).
    return cfg.view_placement == "workers" and cfg.num_workers > 0


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def check_saved_config(out_dir: Path, cfg: Any) -> None:
    """A run directory with checkpoints is resumed only with the config it was started with."""
    saved = out_dir / "config.yaml"
    if saved.is_file() and latest_checkpoint(out_dir) is not None:
        import yaml

        diff = config_lib.differences(yaml.safe_load(saved.read_text()) or {}, cfg)
        if diff:
            raise ConfigError(
                f"{out_dir} holds a run with another config ({'; '.join(diff[:3])}); "
                "use a new --output-dir to start a new run"
            )


def _prepare_output(accelerator: Accelerator, cfg: Any, out_dir: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, out_dir / "config.yaml")


def _process_buffers_file(ckpt: Path, process: int) -> Path:
    return ckpt / f"process_buffers_{process}.safetensors"


def _own_buffers(objective: Objective) -> dict[str, torch.Tensor]:
    """The objective's ``per_process_buffers`` that this instance has, by name."""
    buffers = dict(objective.named_buffers())
    return {name: buffers[name] for name in objective.per_process_buffers if name in buffers}


def _save(accelerator: Accelerator, objective: Objective, out_dir: Path, step: int, keep: int) -> None:
    ckpt = out_dir / "checkpoints" / f"step_{step:07d}"
    accelerator.save_state(str(ckpt))
    own = _own_buffers(objective)
    if own:  # save_state wrote process 0's copy with the model; each process adds its own
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in own.items()},
                  str(_process_buffers_file(ckpt, accelerator.process_index)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
        done = sorted((out_dir / "checkpoints").glob("step_*"))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_own_buffers(accelerator: Accelerator, objective: Objective, ckpt: Path) -> None:
    """Give this process back its own copy of the per-process buffers ``_save`` wrote."""
    own = _own_buffers(objective)
    if not own:
        return
    path = _process_buffers_file(ckpt, accelerator.process_index)
    if not path.is_file():  # saved by fewer processes: load_state gave this one process 0's copy
        import warnings

        warnings.warn(f"{ckpt} holds no {', '.join(own)} of process {accelerator.process_index} (it was saved by "
                      "fewer processes): this process resumes from process 0's", stacklevel=2)
        return
    from safetensors.torch import load_file

    saved = load_file(str(path))
    for name, buffer in own.items():
        if name not in saved or saved[name].shape != buffer.shape:
            raise TrainingError(f"{path} does not match this run's {name} (saved by another configuration?)")
        buffer.copy_(saved[name].to(buffer.device))


def _monitor(task: Task, cfg: Any, objective: nn.Module, model: nn.Module, accelerator: Accelerator,
             step: int) -> dict[str, float]:
    """The task's online monitor on the main process, in eval mode; the others wait.

    It must not draw from the global RNG, so monitoring does not change the run.
    """
    row: dict[str, float] = {}
    if accelerator.is_main_process:
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            figures = task.monitor(cfg, objective.export_encoder())
        model.train()
        if figures:
            row = {"step": step, **{f"monitor/{k}": float(v) for k, v in figures.items()}}
    accelerator.wait_for_everyone()
    return row


class _FiniteGuard:
    """Stops a run at a non-finite loss or gradient without a host sync every step.

    Each step's flag stays on the device: it is reduced over processes (an asynchronous collective
    on GPUs), the first bad step is remembered in a device tensor, and with a fused AdamW or SGD, or LARS, the
    optimizer kernel itself skips a flagged update (its ``found_inf`` input, as a GradScaler uses
    it). The flag is read on the host only at log, monitor and save steps, before anything is
    logged, evaluated or saved, so the last checkpoint on disk always predates the bad step.
    Under fp16 loss scaling an overflowing gradient is the scaler's to skip and only the loss counts.
    """

    def __init__(self, accelerator: Accelerator, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                 out_dir: Path) -> None:
        self.accelerator, self.params, self.out_dir = accelerator, params, out_dir
        self.inner = getattr(optimizer, "optimizer", optimizer)  # under accelerate's wrapper
        self.scaler = accelerator.scaler
        skips_inside = bool(self.inner.defaults.get("fused")) or getattr(self.inner, "accepts_found_inf", False)
        self.skips = skips_inside and self.scaler is None
        self.first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self.found_inf: torch.Tensor | None = None
        self.step = 0

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> torch.Tensor | None:
        """Flags ``step`` (1-based) when its loss or gradient norm is not finite. Returns the gradient's
        global norm (``grad_norm``, or computed here when not clipping); None under fp16 loss scaling,
        whose overflowing steps are the scaler's to skip."""
        bad = ~torch.isfinite(loss.detach().float())
        if self.scaler is not None:
            grad_norm = None
        else:
            if grad_norm is None:
                grads = [p.grad for p in self.params if p.grad is not None]
                grad_norm = torch.stack(torch._foreach_norm(grads)).norm() if grads else torch.zeros(())
            grad_norm = torch.as_tensor(grad_norm, device=self.first_bad.device)
            bad = bad | ~torch.isfinite(grad_norm.float())
        bad = bad.float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")  # every process skips the same steps
        self.found_inf = (bad[0] > 0).float()
        self.first_bad = torch.where((self.first_bad == 0) & (bad[0] > 0), step, self.first_bad)
        self.step = step
        return grad_norm

    @contextlib.contextmanager
    def skip_if_bad(self):
        """Around ``optimizer.step()``: a fused AdamW or SGD, or LARS, leaves the weights and its state alone on a
        flagged step."""
        if not self.skips:
            yield
            return
        self.inner.found_inf = self.found_inf
        try:
            yield
        finally:
            del self.inner.found_inf

    def check(self) -> None:
        """Raises :class:`TrainingError` if any step so far was flagged (one host sync)."""
        bad = int(self.first_bad)
        if bad:
            last = latest_checkpoint(self.out_dir)
            raise TrainingError(
                f"non-finite loss or gradient at step {bad}; stopped at step {self.step} before logging or saving "
                f"anything after it. Last good checkpoint: {last if last else 'none'}. Lower lr or check the data."
            )


def distributed_batchnorm(objective: Objective, processes: int, device_type: str) -> Objective:
    """The objective with SyncBatchNorm for BatchNorm where several processes train on GPUs and the
    objective wants statistics over the global batch (``Objective.sync_batchnorm``; MoCo's shuffle-BN
    does not). SyncBatchNorm has no CPU kernel: on CPU (gloo) BatchNorm statistics stay per process."""
    if processes > 1 and device_type != "cpu" and objective.sync_batchnorm:
        return nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    return objective


def train(task: Task, cfg: Any, accelerator: Accelerator | None = None,
          announce: Callable[[], None] | None = None) -> tuple[nn.Module, Accelerator]:
    """Train ``task`` with ``cfg`` for ``cfg.max_steps`` optimizer steps (resuming if possible).
    ``announce`` runs once the objective is built, so a setting the objective refuses fails first.

    Returns the unwrapped objective and the accelerator.
    """
    out_dir = Path(cfg.output_dir).expanduser()
    check_optimizer_name(cfg.optimizer)  # before anything is written
    check_saved_config(out_dir, cfg)  # before the objective is built: building one can take a while
    accelerator = accelerator or Accelerator(log_with=cfg.log_with, project_dir=str(out_dir))
    in_workers = views_in_workers(cfg)  # a bad value fails before anything is written
    set_seed(cfg.seed)
    objective = task.build_objective(cfg)  # a setting the objective refuses fails before anything is written
    if not isinstance(objective, Objective):
        raise TypeError(f"{task.name}.build_objective must return an mmssl.objectives.base.Objective, "
                        f"not {type(objective).__name__}")
    _prepare_output(accelerator, cfg, out_dir)
    if announce is not None:
        announce()
    if cfg.init:  # before prepare, so every process starts from the same weights
        init_objective(objective, cfg.init)
    objective = distributed_batchnorm(objective, accelerator.num_processes, accelerator.device.type)
    if accelerator.num_processes > 1:
        own = dict(objective.named_buffers())
        unsynced = [name for name in dict.fromkeys((*objective.unsynced_buffers, *objective.per_process_buffers))
                    if name in own]
        if unsynced:  # DDP reads the list when it wraps the objective in prepare
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, unsynced)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, accelerator.device, cfg.lr, cfg.weight_decay, cfg.optimizer, cfg.sgd_momentum,
                               cfg.lars_eta, cfg.lars_clip, cfg.adam_beta2)
    model, optimizer = accelerator.prepare(objective, optimizer)
    objective = accelerator.unwrap_model(model)
    if getattr(cfg, "compile", False):
        # Compiles the forward (and its backward) on first use; the parameters stay the objective's,
        # so checkpoints, after_step updates and the saved encoder are unchanged. fallback_random keeps
        # random ops (negative sampling, masking) on torch's own generator, so a compiled run draws
        # what an eager one draws and resume stays exact.
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
        model = torch.compile(model)

    step = 0
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        _load_own_buffers(accelerator, objective, ckpt)
        step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resuming from {ckpt} (step {step} of {cfg.max_steps})")
    if cfg.log_with:
        accelerator.init_trackers(task.name, config={k: v for k, v in config_lib.flat(cfg).items() if v is not None})

    world = accelerator.num_processes
    batches = iter(task.train_loader(cfg, step * cfg.grad_accum, world, accelerator.process_index,
                                     batch_fn=functools.partial(task.on_device, cfg) if in_workers else None))
    samples_per_step = cfg.batch_size * world * cfg.grad_accum
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not accelerator.is_main_process, desc=task.name, dynamic_ncols=True)
    sums: dict[str, torch.Tensor] = {}
    count, tick = 0, time.perf_counter()
    # Wall seconds and samples seen since this run (not this process) started, for learning curves.
    start_wall = time.perf_counter() - _resumed_wall(out_dir, step)
    log_file = out_dir / "metrics.jsonl"
    guard = _FiniteGuard(accelerator, optimizer, params, out_dir)
    model.train()
    while step < cfg.max_steps:
        task.before_step(cfg, objective, step)  # e.g. DeepCluster's re-clustering, on every process
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        metrics: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            with torch.no_grad():
                batch = _to_device(next(batches), accelerator.device)
                if not in_workers:
                    batch = task.on_device(cfg, batch)
            # Only the last micro-batch all-reduces gradients across processes.
            sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                out = model(batch)
                accelerator.backward(out["loss"] / cfg.grad_accum)
            for k, v in out.items():
                metrics[k] = metrics.get(k, 0) + v.detach().float() / cfg.grad_accum
        grad_norm = accelerator.clip_grad_norm_(params, cfg.clip_grad) if cfg.clip_grad > 0 else None
        grad_norm = guard.observe(step + 1, metrics["loss"], grad_norm)
        if grad_norm is not None:  # before clipping, so a log shows how often and how far clipping cuts
            metrics["grad_norm"] = grad_norm.detach().float()
        with guard.skip_if_bad():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_step(step + 1, cfg.max_steps)  # EMA / queue / prototype updates
        step += 1
        bar.update(1)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0) + v
        count += 1
        at_log = step % cfg.log_every == 0 or step == cfg.max_steps
        at_monitor = cfg.monitor_every and (step % cfg.monitor_every == 0 or step == cfg.max_steps)
        if at_log or at_monitor or step % cfg.save_every == 0:
            guard.check()  # the one host sync for the flag: nothing bad is logged, monitored or saved
        if at_log:
            names = sorted(sums)
            means = accelerator.reduce(torch.stack([sums[k] / count for k in names]), reduction="mean").tolist()
            elapsed = time.perf_counter() - tick
            row = {"step": step, **dict(zip(names, means)), "lr": lr, "samples_per_s": samples_per_step * count / elapsed,
                   **_progress(start_wall, step, samples_per_step)}
            if accelerator.is_main_process:
                with log_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{row['samples_per_s']:.1f}")
            if cfg.log_with:
                accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
            sums, count, tick = {}, 0, time.perf_counter()
        if at_monitor:
            row = _monitor(task, cfg, objective, model, accelerator, step)
            row = {**row, **_progress(start_wall, step, samples_per_step)} if row else row
            if accelerator.is_main_process and row:
                with log_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.write("  ".join(f"{k} {v:.4g}" for k, v in row.items()))
            if cfg.log_with and row:
                accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            _save(accelerator, objective, out_dir, step, cfg.keep_checkpoints)
    bar.close()
    model.eval()
    return objective, accelerator
