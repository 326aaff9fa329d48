"""supcon_image: supervised contrastive learning (arXiv:2004.11362) on images: two augmented
views; every view of the same class in the global batch is a positive. The one image task that
trains on labels (``train_labels``): the label column's values ride with each item to the objective."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.supcon import SupConSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.simclr_image import SimCLRImageConfig


@dataclasses.dataclass(frozen=True)
class SupConImageConfig(ImageConfig):
    # No gradient clipping, as solo-learn's SupCon: the loss's gradient norm rises from below 1 to about 4 over the
    # demo's run on the shapes and glyphs, so the demos' clip of 1 acted on nearly every step and shrank AdamW's
    # later updates against its average of the earlier gradients; without it kNN at k = 20 reads higher there at
    # two seeds, and no lower on clutter (docs/results/image.md)
    clip_grad: float = 0.0
    objective: SupConSettings = SupConSettings(
        proj_hidden=256,  # the paper's hidden layer is as wide as ResNet-50's features; here the conv net's 256
    )
    views: tuple[ViewSettings, ...] = SimCLRImageConfig.views  # the paper's views are SimCLR's (40-100% at 32 px)


@TASKS.register("supcon_image")
class SupConImage(ImageTask):
    objective = "supcon"
    Config = SupConImageConfig
    train_labels = True
