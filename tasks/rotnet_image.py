"""rotnet_image: rotation prediction (arXiv:1803.07728): the encoder sees each image
rotated by 0, 90, 180 and 270 degrees and a linear head names the rotation."""
from __future__ import annotations

import dataclasses

from mmssl.objectives.rotnet import RotNetSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_common import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class RotNetImageConfig(ImageConfig):
    batch_size: int = 32  # x4 rotations per image
    min_scale: float = 0.5
    objective: RotNetSettings = RotNetSettings()


@TASKS.register("rotnet_image")
class RotNetImage(ImageTask):
    name = "rotnet_image"
    encoder = "convnet | vit | resnet"
    objective = "rotnet"
    Config = RotNetImageConfig

    def views(self, cfg: RotNetImageConfig):
        from mmssl.modalities.vision import MAEView

        recipe = MAEView(cfg.image_size, min_scale=cfg.min_scale)
        return lambda img, gen: {"input": recipe(img, gen)}
