"""simsiam_image: SimSiam (arXiv:2011.10566): a predictor and a stop-gradient, no negatives
and no momentum encoder."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings, simclr_views
from mmssl.objectives.simsiam import SimSiamSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SimSiamImageConfig(ImageConfig):
    max_steps: int = 1600  # twice the base's: at 800 its kNN had not passed raw pixels on the shapes
    objective: SimSiamSettings = SimSiamSettings(
        proj_dim=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        pred_hidden=128,  # the paper's bottleneck: a quarter of proj_dim
    )
    # SimSiam's views are SimCLR's, with crops of 40-100% (the paper: 20-100%) as MoCo's and BYOL's at
    # 32 px: both views of a pair then usually hold the object (docs/results/image.md)
    views: tuple[ViewSettings, ...] = simclr_views(min_scale=0.4)


@TASKS.register("simsiam_image")
class SimSiamImage(ImageTask):
    objective = "simsiam"
    Config = SimSiamImageConfig
