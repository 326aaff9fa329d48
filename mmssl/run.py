"""Resolve a task's config and run its training: the entry the CLI, the bench and the tests share."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mmssl import config as config_lib
from mmssl.errors import MmsslError
from mmssl.registry import TASKS


def load_tasks() -> None:
    import mmssl.tasks  # noqa: F401  (registers every task)


def resolve_config(task_name: str, recipe: str | None, flags: dict[str, Any], overrides: list[str]) -> Any:
    """defaults <- recipe (YAML) <- command-line flags <- key=value overrides."""
    load_tasks()
    task = TASKS.get(task_name)()
    cfg = task.default_config()
    if recipe:
        data = config_lib.load_recipe(recipe)
        named = data.pop("task", task_name)
        if named != task_name:
            raise config_lib.ConfigError(f"{recipe} is a recipe for task '{named}', not '{task_name}'")
        cfg = config_lib.apply_overrides(cfg, data)
    cfg = config_lib.apply_overrides(cfg, flags)
    cfg = config_lib.apply_overrides(cfg, dict(config_lib.parse_override(o) for o in overrides))
    if not cfg.output_dir:  # a recipe or override that empties it falls back to the default
        cfg = dataclasses.replace(cfg, output_dir=f"runs/{task_name}")
    if cfg.log_with not in (None, "tensorboard", "wandb"):
        raise config_lib.ConfigError(f"log_with must be tensorboard or wandb, not '{cfg.log_with}'")
    for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise config_lib.ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    task.check_config(cfg)
    return task, cfg


def run_training(task: Any, cfg: Any) -> dict | None:
    from accelerate import Accelerator

    from mmssl.encoders.io import load_encoder, save_encoder
    from mmssl.trainer import train

    if cfg.log_with == "tensorboard":
        _require("tensorboard", "--log-with tensorboard needs tensorboard: pip install 'mmssl[track]'")
    elif cfg.log_with == "wandb":
        _require("wandb", "--log-with wandb needs wandb: pip install wandb")
    accelerator = Accelerator(log_with=cfg.log_with, project_dir=cfg.output_dir, cpu=_cpu_processes())
    accelerator.print(f"task {task.name} ({task.modality}, {task.encoder}, {task.objective}); "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}\n{config_lib.describe(cfg)}")
    objective, accelerator = train(task, cfg, accelerator)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        save_encoder(objective.export_encoder(), out / "encoder", **task.encoder_meta(cfg))
        if cfg.evaluate:
            task.after_training(cfg, objective, out)
    accelerator.wait_for_everyone()
    report = None
    if cfg.evaluate and accelerator.is_main_process:
        report = task.evaluate(cfg, load_encoder(out), out)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        print(f"\n{report['table']}\n\nwrote {out / 'eval.json'}; encoder in {out / 'encoder'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # flushes trackers, then ends the process group
    return report


def _cpu_processes() -> bool:
    """Several processes on a machine without a GPU: accelerate needs cpu=True to use gloo
    (``accelerate launch --multi_gpu`` on CPU otherwise leaves each process alone)."""
    import os

    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _require(module: str, message: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MmsslError(message)
