"""Tasks that exist only for the tests: cpc_audio's model on a few in-memory waveforms."""
import dataclasses

import numpy as np
import torch

from mmssl.data import train_loader
from mmssl.encoders.context import CPCEncoderSettings
from mmssl.modalities.audio import random_crop
from mmssl.registry import TASKS
from mmssl.tasks.cpc_audio import CPCAudio, CPCAudioConfig
from mmssl.tasks.sections import AudioEncoders


def waves(n=16, seconds=0.5, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return [
        (np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.1 * rng.standard_normal(len(t))).astype(np.float32)
        for _ in range(n)
    ]


class Interrupted(RuntimeError):
    """Stands in for a machine dying mid-run."""


class _Crashing:
    def __init__(self, loader, after):
        self.loader, self.after = loader, after

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if self.after is not None and i >= self.after:
                raise Interrupted(f"interrupted after {i} batches")
            yield batch


@TASKS.register("tiny_cpc")
class TinyCPC(CPCAudio):
    """cpc_audio on 16 in-memory waveforms; ``crash_after`` batches simulates a crash,
    ``nan_batch`` poisons one global batch with NaN."""

    name = "tiny_cpc"
    crash_after = None
    nan_batch = None

    def train_loader(self, cfg, start_batch, world, rank, batch_fn=None):
        source = [{"audio": w} for w in waves()]
        nan_batch = self.nan_batch

        def transform(item, gen):
            return {"input": random_crop(item["audio"], cfg.crop_samples, gen)}

        loader = train_loader(source, transform, cfg.batch_size, world, rank, cfg.seed, start_batch, 0,
                              batch_fn=batch_fn)
        if nan_batch is not None:
            loader = _Poison(loader, start_batch, nan_batch)
        return _Crashing(loader, self.crash_after)

    def evaluate(self, cfg, encoder, out_dir=None):
        return {"table": "tiny", "embed_dim": encoder.embed_dim}


class _Poison:
    def __init__(self, loader, start, bad):
        self.loader, self.start, self.bad = loader, start, bad

    def __iter__(self):
        for i, batch in enumerate(self.loader, start=self.start):
            if i == self.bad:
                batch = {"input": torch.full_like(batch["input"], float("nan"))}
            yield batch


def tiny_config(out_dir, **overrides):
    task = TASKS.get("tiny_cpc")()
    base = task.default_config()
    cfg = dataclasses.replace(
        base, output_dir=str(out_dir), batch_size=4, num_workers=0,
        encoder=AudioEncoders(cpc=CPCEncoderSettings(channels=16, context_dim=16)),
        crop_samples=3200, objective=dataclasses.replace(base.objective, steps=3, num_negatives=8), warmup_steps=2,
        log_every=1, max_steps=6, save_every=2, lr=3e-3, monitor_every=0,
    )
    return task, dataclasses.replace(cfg, **overrides)


__all__ = ["CPCAudioConfig", "Interrupted", "TinyCPC", "tiny_config", "waves"]
