"""What a recipe in configs/ resolves to under its task's demo defaults and under other demo defaults: a
recipe overrides the demo's config key by key, so whatever it leaves unsaid moves with the demo."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

import mmssl.tasks  # noqa: F401  (registers every task)
from mmssl.registry import TASKS
from mmssl.run import resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def readings_under_other_defaults(recipe: Path, monkeypatch, others: Iterable[dict[str, Any]],
                                  read: Callable[[Any], Any]) -> list:
    """``read`` of the recipe's resolved config under the task's own defaults, then under each of
    ``others`` (fields replacing the demo's defaults): a recipe that states what ``read`` sees gives one
    reading throughout."""
    name = yaml.safe_load(recipe.read_text())["task"]
    readings = [read(resolve_config(name, str(recipe), {}, [])[1])]
    cls = TASKS.get(name)
    base = cls.default_config
    for other in others:
        monkeypatch.setattr(cls, "default_config", lambda self, other=other: dataclasses.replace(base(self), **other))
        readings.append(read(resolve_config(name, str(recipe), {}, [])[1]))
    return readings
