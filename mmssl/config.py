"""Dataclass configs, YAML recipes and ``key=value`` overrides checked against field types.

A task declares one frozen dataclass that extends :class:`TrainConfig`. A recipe
(``configs/*.yaml``) holds only overrides; the command line adds more. The
resolved config is printed, saved to ``DIR/config.yaml`` and never mutated.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mmssl.errors import MmsslError


class ConfigError(MmsslError, ValueError):
    """A bad recipe or override; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fields every task shares. Batch size is per process; the global batch is
    ``batch_size * processes * grad_accum`` samples per optimizer step."""

    task: str = ""
    output_dir: str = ""  # default: runs/<task>
    # data
    dataset: str = "demo"  # "demo", a Hugging Face Hub id, or a local folder
    dataset_config: str | None = None
    split: str = "train"
    eval_split: str | None = None  # default: "test" when the dataset has it, else a held-out share
    streaming: bool = False
    label_column: str | None = None
    num_workers: int = 2
    # optimisation
    max_steps: int = 300
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    warmup_steps: int = 20
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd | lars
    adam_beta2: float = 0.999  # AdamW's second-moment decay (MAE recipes: 0.95)
    sgd_momentum: float = 0.9  # sgd and lars
    lars_eta: float = 0.02  # LARS trust coefficient
    lars_clip: bool = True  # LARS: a layer's rate never exceeds lr
    clip_grad: float = 1.0
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    log_with: str | None = None  # tensorboard | wandb
    monitor_every: int = 0  # run the task's online monitor (e.g. kNN accuracy) every N steps; 0: never
    evaluate: bool = True
    compile: bool = False  # run the objective under torch.compile (same maths; slow first step)
    init: str | None = None  # start the encoder from these weights (MAE / timm / transformers ViT, torchvision ResNet)


# Fields that may change when a run is resumed; everything else must match the saved config.
RUNTIME_FIELDS = {"output_dir", "num_workers", "log_every", "save_every", "keep_checkpoints", "log_with",
                  "monitor_every", "evaluate", "compile"}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_NONE = ("none", "null", "~")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` (a YAML value, or raw text from the command line) against ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (tuple, list):
        item = next((a for a in typing.get_args(hint) if a is not Ellipsis), str)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(key, v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if isinstance(value, str):  # raw command-line text for a typed field
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return value


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with ``overrides`` applied; unknown keys and wrong types raise."""
    hints = _field_types(type(cfg))
    changes = {}
    for key, value in overrides.items():
        if key not in hints:
            close = [k for k in hints if key in k or k in key]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"unknown config key '{key}' for {type(cfg).__name__}{hint}")
        changes[key] = _coerce(key, value, hints[key])
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> tuple[str, str]:
    """``"lr=3e-4"`` -> ``("lr", "3e-4")``; the text is typed later against the field."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected key=value, got '{text}'")
    return key.strip().replace("-", "_"), raw.strip()


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of config keys to values")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def differences(saved: dict[str, Any], cfg: Any) -> list[str]:
    """Fields (other than runtime ones) whose value differs from a saved config."""
    now = to_dict(cfg)
    return [
        f"{k}: {saved.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RUNTIME_FIELDS and saved.get(k) != now[k]
    ]


def describe(cfg: Any) -> str:
    return "\n".join(f"  {k}: {v}" for k, v in to_dict(cfg).items())
