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
    cfg = with_output_dir_expanded(cfg)
    if cfg.log_with not in (None, "tensorboard", "wandb"):
        raise config_lib.ConfigError(f"log_with must be tensorboard or wandb, not '{cfg.log_with}'")
    for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise config_lib.ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    task.check_config(cfg)
    task.encoder_spec(cfg)  # an encoder setting the encoder refuses fails here, before any data is read
    return task, cfg


def run_training(task: Any, cfg: Any, mixed_precision: str | None = None) -> dict | None:
    """Train, save the encoder and evaluate. ``mixed_precision`` (no, bf16, fp16) is accelerate's; None takes
    it from the launcher (``accelerate launch --mixed_precision``, through its environment)."""
    from accelerate import Accelerator

    from mmssl.encoders.io import load_encoder, save_encoder
    from mmssl.trainer import check_saved_config, train

    cfg = with_output_dir_expanded(cfg)  # a caller from Python may skip resolve_config
    if cfg.log_with == "tensorboard":
        _require("tensorboard", "--log-with tensorboard needs tensorboard: pip install 'mmssl[track]'")
    elif cfg.log_with == "wandb":
        _require("wandb", "--log-with wandb needs wandb: pip install wandb")
    check_output_dir(cfg)
    cfg, notes = check_data(task, cfg)  # every data error before anything is printed or built
    check_saved_config(Path(cfg.output_dir), cfg)  # after check_data: a resumed run compares the label column it chose
    accelerator = Accelerator(log_with=cfg.log_with, project_dir=cfg.output_dir, cpu=_cpu_processes(),
                              mixed_precision=mixed_precision)
    if accelerator.device.type == "cpu":  # before the DataLoader workers fork, so they share it
        from mmssl.host_memory import keep_freed_memory

        keep_freed_memory()
    header = (f"task {task.name} ({task.modality}, {task.encoder_names()}, {task.objective}); "
              f"{accelerator.num_processes} process(es) on {accelerator.device}, "
              f"mixed precision {accelerator.mixed_precision}")
    # printed once the objective is built, so that a setting it refuses is the only line of the run
    objective, accelerator = train(task, cfg, accelerator,
                                   announce=lambda: accelerator.print("\n".join([header, describe_changes(task, cfg), *notes])))
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


def describe_changes(task: Any, cfg: Any) -> str:
    """The values that differ from the task's defaults, a few per line, by their dotted key inside
    sections (``encoder.vit.dim=16``); the full config goes to DIR/config.yaml."""
    default, now = config_lib.flat(task.default_config()), config_lib.flat(cfg)
    changed = [f"{k}={v}" for k, v in now.items() if default.get(k) != v and k != "task"]
    if not changed:
        return f"config: the task's defaults (all of it in {Path(cfg.output_dir) / 'config.yaml'})"
    lines, line = [], "config:"
    for item in changed:
        if len(line) + len(item) > 100 and line != "config:":
            lines.append(line)
            line = "       "
        line += " " + item
    lines.append(line)
    return "\n".join(lines) + f"\n        (all of it in {Path(cfg.output_dir) / 'config.yaml'})"


def with_output_dir_expanded(cfg: Any) -> Any:
    """``cfg`` with a leading "~" of its output_dir expanded. A recipe's "~/runs/x" is no shell word, so
    nothing else expands it: every reader of the config (the checks, the trainer, the evaluation) then
    sees the same folder."""
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).expanduser()))


def check_output_dir(cfg: Any) -> None:
    """The output folder (already expanded) is a folder, or can be made."""
    import os

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise MmsslError(f"--output-dir {cfg.output_dir} is a file, not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MmsslError(f"--output-dir {cfg.output_dir}: cannot write to {parent}")


def check_data(task: Any, cfg: Any) -> tuple[Any, list[str]]:
    """Open the training data (and the DAVIS root of a video task) as training will, choose the
    probe labels, and say what the end-of-run evaluation will skip: every data error surfaces here,
    before a model is built. Returns (the config with ``label_column`` filled in, lines to print)."""
    from mmssl.sources import choose_label_column, probe_hint

    notes: list[str] = []
    if task.modality == "video":
        from mmssl.evaluation.propagation import PROTOCOLS

        if getattr(cfg, "track_protocol", PROTOCOLS[0]) not in PROTOCOLS:
            raise config_lib.ConfigError(f"track_protocol must be one of {', '.join(PROTOCOLS)}, "
                                         f"not '{cfg.track_protocol}'")
        if hasattr(task, "source") and not cfg.streaming:
            task.source(cfg, cfg.split)
        if hasattr(task, "davis") and task.davis(cfg) is None and cfg.evaluate:
            notes.append(f"no DAVIS root: the evaluation skips label propagation; pass davis_root=ROOT, or run "
                         f"mmssl track --checkpoint {cfg.output_dir} --davis ROOT")
        return cfg, notes
    if cfg.dataset == "demo":  # its own labels
        return cfg, notes
    ds = _training_table(task, cfg)
    if ds is None:
        return cfg, notes
    column, why = choose_label_column(ds, task.modality, cfg.label_column)
    if column is not None:
        cfg = dataclasses.replace(cfg, label_column=column)
        notes.append(f"labels: column '{column}' ({why})")
    elif cfg.evaluate:
        notes.append(probe_hint(task, cfg, ds))
    return cfg, notes


def _training_table(task: Any, cfg: Any) -> Any:
    """The training split as a ``datasets`` table (opened and checked like training opens it), or
    None for a source without one."""
    if task.modality == "audio":
        from mmssl.modalities.audio import open_audio
        from mmssl.sources import check_columns, open_split

        if cfg.streaming:
            ds = open_split(cfg.dataset, cfg.split, config=cfg.dataset_config, streaming=True)
            check_columns(ds, cfg.dataset, **{"--audio-column": cfg.audio_column, "--label-column": cfg.label_column})
            return None
        source = open_audio(cfg.dataset, cfg.split, cfg.dataset_config, cfg.audio_column, cfg.label_column)
    elif task.modality == "image":
        from mmssl.modalities.vision import open_images

        if cfg.streaming:
            raise MmsslError("image tasks read map-style datasets; drop --streaming")
        source = open_images(cfg.dataset, cfg.split, cfg.dataset_config, cfg.image_column, cfg.label_column)
    else:
        return None
    return getattr(source, "ds", None)


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
