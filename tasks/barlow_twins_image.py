"""barlow_twins_image: Barlow Twins (arXiv:2103.03230) on images: two augmented views, their
batch-standardised projections' cross-correlation pulled towards the identity."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings, byol_views
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
    views: tuple[ViewSettings, ...] = byol_views(min_scale=0.4)  # the paper's views are BYOL's


@TASKS.register("barlow_twins_image")
class BarlowTwinsImage(ImageTask):
    objective = "barlow_twins"
    Config = BarlowTwinsImageConfig
