"""swav_image: SwAV (arXiv:2006.09882): online clustering onto prototypes with
Sinkhorn-Knopp (sums over all processes), swapped prediction, multi-crop."""
from __future__ import annotations

import dataclasses

from mmssl.objectives.swav import SwAVSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_common import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SwAVImageConfig(ImageConfig):
    max_steps: int = 1600  # its kNN passes raw pixels at 1600 steps (about 12 minutes here), not yet at 800
    objective: SwAVSettings = SwAVSettings(
        proj_hidden=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        # Fewer prototypes than the demo's batch of 64: Sinkhorn's equal partition then groups the
        # batch's samples instead of spreading them one per prototype. The CIFAR recipe's 3000 face a
        # batch of 256 plus a 3840-embedding queue, so there too Sinkhorn sees more samples than prototypes.
        num_prototypes=30,
    )
    num_local: int = 4  # local crops beside the 2 global ones
    local_size: int = 16
    min_scale: float = 0.14  # global crops cover (min_scale, 1); local ones (0.05, min_scale)
    blur: bool = False  # no blur at 32 px, as in the CIFAR recipes; true gives the paper's ImageNet views


@TASKS.register("swav_image")
class SwAVImage(ImageTask):
    name = "swav_image"
    encoder = "convnet | vit | resnet"
    objective = "swav"
    Config = SwAVImageConfig

    def views(self, cfg: SwAVImageConfig):
        from mmssl.modalities.vision import MultiCropViews

        recipe = MultiCropViews(cfg.image_size, cfg.local_size, cfg.num_local, global_scale=(cfg.min_scale, 1.0),
                                local_scale=(0.05, cfg.min_scale), blur=cfg.blur)
        return lambda img, gen: {"views": recipe(img, gen)}
