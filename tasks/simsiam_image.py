"""simsiam_image: SimSiam (arXiv:2011.10566): a predictor and a stop-gradient, no negatives
and no momentum encoder."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.simsiam import SimSiamSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SimSiamImageConfig(ImageConfig):
    max_steps: int = 1600  # its kNN passes raw pixels between 800 and 1600 steps (about 6 minutes here)
    objective: SimSiamSettings = SimSiamSettings(
        proj_dim=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        pred_hidden=128,  # the paper's bottleneck: a quarter of proj_dim
    )
    # SimSiam's views are SimCLR's: crops of 20-100% here, no blur at 32 px (the paper blurs with p 0.5 at 224).
    views: tuple[ViewSettings, ...] = (ViewSettings(crops=2, min_scale=0.2, blur_prob=0.0),)


@TASKS.register("simsiam_image")
class SimSiamImage(ImageTask):
    name = "simsiam_image"
    encoder = "convnet | vit | resnet"
    objective = "simsiam"
    Config = SimSiamImageConfig
