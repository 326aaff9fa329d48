"""simclr_image: SimCLR (arXiv:2002.05709) on images: two augmented views, NT-Xent
against the other views of the global batch (gathered from all processes with gradients)."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings, simclr_views
from mmssl.objectives.simclr import SimCLRSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SimCLRImageConfig(ImageConfig):
    objective: SimCLRSettings = SimCLRSettings(
        proj_hidden=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        temperature=0.2,  # solo-learn's CIFAR value for batches of hundreds; the paper's 0.1 goes with 4096
    )
    # The paper's views with crops of 40-100% (the paper: 8-100%), as the other crop-invariance tasks'
    # at 32 px: both views of a pair then usually hold the object (docs/results/image.md).
    # configs/simclr_cifar10.yaml keeps solo-learn's 8-100%.
    views: tuple[ViewSettings, ...] = simclr_views(min_scale=0.4)


@TASKS.register("simclr_image")
class SimCLRImage(ImageTask):
    objective = "simclr"
    Config = SimCLRImageConfig
