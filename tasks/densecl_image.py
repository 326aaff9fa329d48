"""densecl_image: DenseCL (arXiv:2011.09157): MoCo v2 plus a contrastive loss between the feature
map's locations, each query location's positive the key location most like it in the backbone."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.densecl import DenseCLSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.moco_image import MoCoImageConfig


@dataclasses.dataclass(frozen=True)
class DenseCLImageConfig(ImageConfig):
    # moco_image's demo plus the dense loss: the same encoder, views, MoCo settings and length. At 1600 steps its
    # kNN at k = 20 on the clutter folder sat at raw pixels' level; at 3200 it passes its random encoder and
    # pixels on every set reported at two seeds, as MoCo does (docs/results/image.md).
    max_steps: int = MoCoImageConfig.max_steps
    objective: DenseCLSettings = DenseCLSettings(
        proj_hidden=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        queue_size=4096,  # 32 steps of 128 keys: 65536 would hold keys of a much older encoder in a short run
        dense_queue_size=4096,  # one pooled dense key per image, as the global queue: the same reasoning
        momentum=0.99,  # the key encoder follows over ~100 steps, not ~1000: suited to 1600 steps
        symmetric=True,  # both views act as query once, as moco_image (the paper: one query per pair)
        shuffle_bn=16,  # 4 BatchNorm groups in the demo's batch of 64 (the paper: 32 per GPU)
    )
    views: tuple[ViewSettings, ...] = MoCoImageConfig.views  # DenseCL's views are MoCo v2's: moco_image's own


@TASKS.register("densecl_image")
class DenseCLImage(ImageTask):
    objective = "densecl"
    Config = DenseCLImageConfig
