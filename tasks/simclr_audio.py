"""simclr_audio: SimCLR on waveforms. Two random crops of one utterance, each with
random gain, noise and a time mask, are a positive pair; the rest of the global
batch are negatives. The objective is the same code as simclr_image.

Workers cut the two crops and draw their parameters; gain, noise and masks are
applied to the whole batch on the device (``on_device``)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mmssl.modalities.audio.augment import AudioViewSettings, augment_pairs, two_crops
from mmssl.objectives.simclr import SimCLRSettings
from mmssl.registry import TASKS
from mmssl.tasks.audio_base import AudioConfig, AudioTask


@dataclasses.dataclass(frozen=True)
class SimCLRAudioConfig(AudioConfig):
    max_steps: int = 250
    batch_size: int = 16
    objective: SimCLRSettings = SimCLRSettings(
        proj_hidden=512,  # twice the context network's 256 features, not ResNet-50's 2048
        temperature=0.2,  # as simclr_image: batches of tens, not the paper's 4096
    )
    views: AudioViewSettings = AudioViewSettings()
    renamed: ClassVar[dict[str, str]] = {**AudioConfig.renamed, "gain_db": "views.gain_db",
                                         "min_snr_db": "views.min_snr_db", "time_masks": "views.time_masks"}


@TASKS.register("simclr_audio")
class SimCLRAudio(AudioTask):
    objective = "simclr"
    Config = SimCLRAudioConfig

    def make_item(self, cfg: SimCLRAudioConfig):
        crop, kw = cfg.crop_samples, cfg.views.params()
        return lambda item, gen: two_crops(item["audio"], crop, gen, **kw)

    def on_device(self, cfg: SimCLRAudioConfig, batch: dict) -> dict:
        """{"crops": (B, 2, L), parameters (B, 2, ...)} -> {"views": [x0, x1]}, each (B, L)."""
        return {"views": augment_pairs(batch)}
