"""rotnet_image: rotation prediction (arXiv:1803.07728): the encoder sees each image
rotated by 0, 90, 180 and 270 degrees and a linear head names the rotation."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.rotnet import RotNetSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class RotNetImageConfig(ImageConfig):
    batch_size: int = 32  # x4 rotations per image
    objective: RotNetSettings = RotNetSettings()
    # A random resized crop (50-100%) and a flip, no colour changes; the rotations are the objective's.
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.5)


@TASKS.register("rotnet_image")
class RotNetImage(ImageTask):
    objective = "rotnet"
    Config = RotNetImageConfig
