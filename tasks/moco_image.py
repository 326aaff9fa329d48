"""moco_image: MoCo v2 (arXiv:2003.04297): a momentum key encoder and a queue of keys
gathered from all processes, enqueued after each optimizer step."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings, simclr_views
from mmssl.objectives.moco import MoCoSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class MoCoImageConfig(ImageConfig):
    # Four times the base's: at 800 its kNN had not passed raw pixels on the shapes, and at 1600 it sat at
    # pixels' level on a small object over a busy background (the clutter set; docs/results/image.md)
    max_steps: int = 3200
    objective: MoCoSettings = MoCoSettings(
        proj_hidden=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        queue_size=4096,  # 32 steps of 128 keys: 65536 would hold keys of a much older encoder in a short run
        momentum=0.99,  # the key encoder follows over ~100 steps, not ~1000: suited to a few thousand steps
        symmetric=True,  # both views act as query once (solo-learn's CIFAR setting)
        shuffle_bn=16,  # 4 BatchNorm groups in the demo's batch of 64 (the paper: 32 per GPU)
    )
    # MoCo v2's views are SimCLR's, with crops of 40-100% (the paper: 20-100%) as BYOL's, Barlow Twins'
    # and VICReg's at 32 px: both views of a pair then usually hold the object (docs/results/image.md)
    views: tuple[ViewSettings, ...] = simclr_views(min_scale=0.4)


@TASKS.register("moco_image")
class MoCoImage(ImageTask):
    objective = "moco"
    Config = MoCoImageConfig
