"""The objective contract: what the trainer, the monitor and the docs may rely on.

An objective is an ``nn.Module`` that owns its encoder (and any target network, queue or
prototypes) and turns a batch into a loss. It keeps three promises:

- ``forward(batch) -> dict``: ``"loss"`` (a scalar with gradients) plus cheap detached metrics under
  the names in ``METRICS`` where they apply, and any objective-specific extras;
- ``after_step(step, max_steps)``: state updates (EMA targets, queues, prototype normalisation) run
  here, once per real optimizer step, never inside ``forward`` -- so gradient accumulation and
  several processes see the same updates;
- ``export_encoder()``: the module saved as the run's encoder (``self.encoder`` unless overridden).

Its hyperparameters are one frozen dataclass in its module (``SimCLRSettings``, ...), named by the
class attribute ``Settings``, with the paper's defaults; the constructor takes the encoder and then
exactly the settings' fields as keyword arguments (plus anything that is not a setting, such as a
fitted colour quantizer), so ``OBJECTIVES.build(name, encoder=e, **dataclasses.asdict(settings))``
builds it. A task config nests the settings as its ``objective`` field.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

METRICS = {
    "loss": "the training loss (scalar)",
    "acc": "accuracy of the objective's own prediction: the positive among the negatives, the rotation, "
           "the colour cluster",
    "std": "standard deviation of L2-normalised embeddings over the batch (about 1/sqrt(D) when healthy, 0 when "
           "collapsed)",
}


def metric_name_ok(objective: Objective, name: str) -> bool:
    """Whether ``name`` is a shared metric, a suffixed variant of one, or one the objective declares."""
    return name in METRICS or any(name.startswith(f"{m}_") for m in METRICS) or name in objective.extra_metrics


class Objective(nn.Module):
    """Base of every objective; subclasses set ``self.encoder`` and implement ``forward``."""

    encoder: nn.Module
    Settings: ClassVar[type]  # the settings dataclass whose fields the constructor takes
    # Names an objective logs beyond METRICS (a METRICS name with a suffix, such as acc_step1, needs none).
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    # True: forward reads one crop of each item as batch["input"]; False: several as batch["views"].
    single_view: ClassVar[bool] = False
    # Buffers that DDP must not copy from process 0 before every forward (what it does with buffers by
    # default, for BatchNorm's statistics): state each process keeps for itself (SwAV's queue of its own
    # embeddings, which the copy would replace with process 0's), and large state that every process
    # already updates identically from gathered values (MoCo's queue, the memory bank), where the copy
    # is a broadcast of the whole buffer per step for nothing. Names relative to the objective; one a
    # given instance lacks (its settings left it out) is passed over.
    unsynced_buffers: ClassVar[tuple[str, ...]] = ()
    # Of those, the ones whose value differs from process to process (SwAV's queue). A checkpoint keeps
    # every process's own copy beside the model's (which holds process 0's), and a resumed run gives each
    # process back its own, so a multi-process resume continues as the uninterrupted run would.
    per_process_buffers: ClassVar[tuple[str, ...]] = ()

    @property
    def sync_batchnorm(self) -> bool:
        """Whether the trainer makes BatchNorm SyncBatchNorm when several GPUs train (statistics over
        the global batch). False for a method whose BatchNorm statistics must stay per process."""
        return True

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, step: int, max_steps: int) -> None:
        """Called by the trainer after optimizer step ``step`` (1-based) of ``max_steps``."""

    def export_encoder(self) -> nn.Module:
        return self.encoder
