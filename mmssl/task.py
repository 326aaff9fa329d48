"""The task interface: a config, a model, a data stream and an evaluation, under one name."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmssl.config import ConfigError, TrainConfig
from mmssl.encoders.io import build_encoder
from mmssl.errors import MmsslError
from mmssl.registry import OBJECTIVES


class Task:
    """Subclass, set the class attributes and register with ``@TASKS.register(name)``."""

    name: ClassVar[str] = ""  # set by the registration
    modality: ClassVar[str] = ""
    encoder: ClassVar[str] = ""  # shown by ``mmssl tasks``; empty: the choices of the config's encoder section
    objective: ClassVar[str] = ""  # the OBJECTIVES key; the config's ``objective`` field holds its settings
    objective_note: ClassVar[str] = ""  # shown beside it by ``mmssl tasks``, e.g. "tube masking"
    default_data: ClassVar[str] = "demo"
    Config: ClassVar[type[TrainConfig]] = TrainConfig

    @classmethod
    def encoder_names(cls) -> str:
        """The encoder column of ``mmssl tasks`` and the run's header line."""
        if cls.encoder:
            return cls.encoder
        section = next((f.default for f in dataclasses.fields(cls.Config) if f.name == "encoder"), None)
        return section.describe() if section is not None else ""

    def default_config(self) -> TrainConfig:
        return self.Config(task=self.name, output_dir=f"runs/{self.name}")

    def check_config(self, cfg: Any) -> None:
        """Raise a one-line ConfigError for a bad task-specific setting, before anything loads. The
        base checks every section of ``cfg`` that can check itself (a ``check()`` method)."""
        for field in dataclasses.fields(cfg):
            check = getattr(getattr(cfg, field.name), "check", None)
            if callable(check):
                check()

    def build_encoder(self, cfg: Any) -> nn.Module:
        return build_encoder(self.encoder_spec(cfg))

    def encoder_spec(self, cfg: Any) -> dict:
        """``{"name": ENCODERS key, "kwargs": {...}}`` for this config."""
        raise NotImplementedError

    def build_objective(self, cfg: Any, **extra: Any) -> nn.Module:
        """The objective module (it owns the encoder and any target networks): ``self.objective`` from
        the registry, given the encoder and the settings in ``cfg.objective``. ``extra``: arguments
        that are not settings, for tasks that override this (MAE's masking, fitted colour clusters)."""
        encoder = self.build_encoder(cfg)
        try:
            return OBJECTIVES.build(self.objective, encoder=encoder, **extra, **dataclasses.asdict(cfg.objective))
        except ValueError as e:  # a setting the objective refuses: one line, before any training
            if isinstance(e, MmsslError):
                raise
            raise ConfigError(f"objective ({self.objective}): {e}") from None

    def make_item(self, cfg: Any) -> Callable[[dict, torch.Generator], dict]:
        """``(source item, the item's generator) -> training item``, run in the DataLoader workers:
        decode, crop to a size that stacks, and draw the views' random parameters or the seed they are
        drawn from (``on_device`` makes the views). Every modality's ``train_loader`` maps its source through this."""
        raise NotImplementedError

    def train_loader(self, cfg: Any, start_batch: int, world: int, rank: int,
                     batch_fn: Callable[[dict], dict] | None = None) -> Iterable[dict]:
        """An endless stream of this process's batches, starting at global batch ``start_batch``.
        ``batch_fn`` must reach ``mmssl.data.train_loader``, which maps each collated batch with it
        in the worker: the trainer passes ``on_device`` there when the views are made in the workers."""
        raise NotImplementedError

    def on_device(self, cfg: Any, batch: dict) -> dict:
        """The batch the objective reads, made from a collated batch.

        Workers only decode; views are made here on whole batches (under ``torch.no_grad``), from
        per-sample random parameters that come from each item's own generator (drawn in the worker,
        or hashed here from a seed the worker drew), so they depend on the seed and the global
        sample index alone. It runs on the training device,
        or in the DataLoader worker that collated the batch (``view_placement``: on a CPU the
        worker's core would otherwise wait while the main process trains). The default passes it
        through.
        """
        return batch

    def before_step(self, cfg: Any, objective: nn.Module, step: int) -> None:
        """Work between optimizer steps that needs the task's data, on every process, before step
        ``step`` (0-based) is taken; the objective is unwrapped and in train mode. DeepCluster
        re-clusters the training set here. It must depend only on ``step`` and the objective's
        state, so a resumed run repeats it, and must not read back to the host on a step where
        it does nothing. The default does nothing."""

    def before_step_period(self, cfg: Any, objective: nn.Module) -> int:
        """Optimizer steps between two runs of work in ``before_step`` that recurs (DeepCluster's
        re-clustering), 0 where there is none. A throughput measured over fewer steps than this
        leaves that work out."""
        return 0

    def encoder_meta(self, cfg: Any) -> dict:
        """Metadata saved beside the encoder (modality, sample rate, ...)."""
        return {"task": self.name, "modality": self.modality}

    def monitor(self, cfg: Any, encoder: nn.Module) -> dict[str, float]:
        """Cheap figures logged every ``cfg.monitor_every`` steps on the main process (eval mode,
        no gradients), e.g. online kNN accuracy on a held-out labelled split."""
        return {}

    def after_training(self, cfg: Any, objective: nn.Module, out_dir: Path) -> None:
        """Anything that needs the whole objective rather than the saved encoder
        (e.g. MAE reconstructions); runs on the main process after training."""

    def random_encoder(self, cfg: Any, encoder: nn.Module) -> nn.Module:
        """The evaluation's baseline: ``encoder``'s architecture (its saved spec), initialised from
        seed ``cfg.seed + 1`` without moving the global random stream."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            return build_encoder(encoder.spec).eval()

    def evaluate(self, cfg: Any, encoder: nn.Module, out_dir: Path) -> dict:
        """The task's evaluation of a trained encoder: a JSON-able report with a ``table`` string."""
        return {"table": "no evaluation for this task"}
