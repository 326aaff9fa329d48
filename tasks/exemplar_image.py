"""exemplar_image: instance discrimination, each training image its own class (Exemplar CNN,
arXiv:1406.6909; with Wu et al.'s memory bank, arXiv:1805.01978, by default): one heavily
augmented crop per image per step, named among N images by a classifier or a memory bank."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.exemplar import Exemplar, ExemplarSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.simclr_image import SimCLRImageConfig


@dataclasses.dataclass(frozen=True)
class ExemplarImageConfig(ImageConfig):
    # Each image's bank entry is written once per epoch (62 steps of the demo's 4000 images), so a
    # positive is always the oldest entry in its softmax: an encoder that moves slowly keeps it current.
    # At the image tasks' lr 1e-3 the features drifted faster than the bank and lost the shapes.
    max_steps: int = 1600
    lr: float = 1e-4
    objective: ExemplarSettings = ExemplarSettings()
    # simclr_image's crops (40-100% at 32 px), flips and colour changes, one crop per image (the paper's
    # heavy augmentation of each seed patch): the crop and its bank entry then usually both hold the object.
    views: tuple[ViewSettings, ...] = (dataclasses.replace(SimCLRImageConfig.views[0], crops=1),)


@TASKS.register("exemplar_image")
class ExemplarImage(ImageTask):
    objective = "exemplar"
    Config = ExemplarImageConfig

    def build_objective(self, cfg: ExemplarImageConfig, **extra) -> Exemplar:
        # N: one class (one bank entry) per image of the training split, whose indices the batches carry.
        num_images = len(self.source(cfg, cfg.split, labels=self.train_labels))
        return super().build_objective(cfg, num_images=num_images, **extra)
