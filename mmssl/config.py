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
from typing import Any, ClassVar

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
    # Where a batch's views are made (the same views either way): "device" (after the batch moves to
    # the training device), "workers" (in the DataLoader worker that collated it, beside the training
    # step) or "auto" (the device; see mmssl.trainer.views_in_workers).
    view_placement: str = "auto"
    init: str | None = None  # start the encoder from these weights (MAE / timm / transformers ViT, torchvision ResNet)

    # Keys that moved, old name -> where the setting is now: an old key in a recipe or override, or in
    # the saved config of a run to resume, is refused with the new name rather than as unknown.
    renamed: ClassVar[dict[str, str]] = {}


# Fields that may change when a run is resumed; everything else must match the saved config.
RUNTIME_FIELDS = {"output_dir", "num_workers", "log_every", "save_every", "keep_checkpoints", "log_with",
                  "monitor_every", "evaluate", "compile", "view_placement", "in_memory_mib"}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a YAML scalar reads as one item, as the same text on the command line does
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


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of ``cfg`` with ``overrides`` applied; unknown keys and wrong types raise.

    A field may be a nested frozen dataclass or a tuple of them (a section such as ``views``): a
    dotted key reaches inside it (``views.0.min_scale``, list items by index), and a mapping (or a
    list of mappings) overrides the current section field by field.
    """
    hints = _field_types(type(cfg))
    for key, value in overrides.items():
        name, _, rest = key.partition(".")
        if name not in hints:
            moved = getattr(type(cfg), "renamed", {}).get(name)
            if moved:
                raise ConfigError(f"config key '{prefix}{name}' is now {moved}")
            close = [k for k in hints if name in k or k in name]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}' for {type(cfg).__name__}{hint}")
        new = _set(f"{prefix}{name}", getattr(cfg, name), hints[name], rest, value)
        cfg = dataclasses.replace(cfg, **{name: new})
    return cfg


def _section(hint: Any) -> type | None:
    """The dataclass a field holds: the hint itself, or the item of a ``tuple[Section, ...]``."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is tuple:
        item = next((a for a in typing.get_args(hint) if a is not Ellipsis), None)
        return item if dataclasses.is_dataclass(item) else None
    return None


def _set(key: str, current: Any, hint: Any, path: str, value: Any) -> Any:
    """``current`` (of type ``hint``) with ``value`` put at the dotted ``path`` inside it."""
    section = _section(hint)
    if section is None:
        if path:
            raise ConfigError(f"unknown config key '{key}.{path}': {key} has no fields")
        return _coerce(key, value, hint)
    if isinstance(value, str) and not path:  # a whole section on the command line, as YAML text
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: not valid YAML: {value!r}") from None
    if dataclasses.is_dataclass(hint):
        if path:
            return apply_overrides(current, {path: value}, f"{key}.")
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return apply_overrides(current, value, f"{key}.")
    items = tuple(current)
    if path:  # one item: views.1.size=16
        index, _, rest = path.partition(".")
        if not index.isdigit() or int(index) >= len(items):
            raise ConfigError(f"{key}.{index}: {key} has items 0..{len(items) - 1}")
        i = int(index)
        return items[:i] + (_set(f"{key}.{i}", items[i], section, rest, value),) + items[i + 1:]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of {section.__name__} mappings, got {value!r}")
    # A list replaces the section; item i starts from the current item i where there is one.
    return tuple(_set(f"{key}.{i}", items[i] if i < len(items) else section(), section, "", v)
                 for i, v in enumerate(value))


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


def _plain(value: Any) -> Any:
    """Tuples (also inside nested sections) as lists, so YAML can write them."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return _plain(dataclasses.asdict(cfg))


def _flat(data: dict[str, Any], prefix: str = "", counts: bool = True) -> dict[str, Any]:
    """Nested sections as dotted keys: {"views": [{"size": 32}]} -> {"views.0.size": 32}."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}.", counts))
        elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
            if counts:  # so that a changed number of items shows too
                out[f"{prefix}{k}"] = len(v)
            for i, item in enumerate(v):
                out.update(_flat(item, f"{prefix}{k}.{i}.", counts))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def differences(saved: dict[str, Any], cfg: Any) -> list[str]:
    """Fields (other than runtime ones) whose value differs from a saved config; fields inside
    nested sections are named by their dotted key. A saved config that uses keys since renamed
    (``cfg.renamed``) is refused: its values cannot be compared."""
    moved = [f"{k} -> {new.split(' (')[0]}" for k, new in type(cfg).renamed.items() if k in saved]
    if moved:
        raise ConfigError(f"the run's config.yaml names settings by keys that have since moved ({', '.join(moved[:3])}"
                          f"{', ...' if len(moved) > 3 else ''}): resume it with the mmssl version that started it, "
                          "or use a new --output-dir")
    before, now = _flat(saved), _flat(to_dict(cfg))
    return [
        f"{k}: {before.get(k)!r} -> {now[k]!r}"
        for k in now
        if k.partition(".")[0] not in RUNTIME_FIELDS and before.get(k) != now[k]
    ]


def flat(cfg: Any) -> dict[str, Any]:
    """The config as one level of dotted keys (``views.0.min_scale``) and scalar values, as trackers'
    hparams need: a list of numbers as the command line writes it (``encoder.convnet.widths: 32,64``)."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in _flat(to_dict(cfg), counts=False).items()}


def describe(cfg: Any) -> str:
    return "\n".join(f"  {k}: {v}" for k, v in flat(cfg).items())
