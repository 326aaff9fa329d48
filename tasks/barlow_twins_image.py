"""barlow_twins_image: Barlow Twins (arXiv:2103.03230) on images: two augmented views, their
batch-standardised projections' cross-correlation pulled towards the identity."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.barlow_twins import BarlowTwinsSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class BarlowTwinsImageConfig(ImageConfig):
    objective: BarlowTwinsSettings = BarlowTwinsSettings(
        # 4x the demo conv net's 256 features, not 8192: the paper's accuracy grows with the width,
        # but a CPU demo pays for three (P, P)-sized layers and products every step
        proj_hidden=1024,
        proj_dim=1024,
    )
    # The paper's views are BYOL's asymmetric pair: crops (40-100% here, so both views usually keep
    # the shape), flip, jitter 0.4 / 0.4 / 0.2 / 0.1 with p 0.8, grayscale p 0.2, the second view
    # solarized with p 0.2. No blur at 32 px, as the CIFAR recipes.
    views: tuple[ViewSettings, ...] = (
        ViewSettings(min_scale=0.4, saturation=0.2, blur_prob=0.0),
        ViewSettings(min_scale=0.4, saturation=0.2, blur_prob=0.0, solarize_prob=0.2),
    )


@TASKS.register("barlow_twins_image")
class BarlowTwinsImage(ImageTask):
    name = "barlow_twins_image"
    encoder = "convnet | vit | resnet"
    objective = "barlow_twins"
    Config = BarlowTwinsImageConfig
