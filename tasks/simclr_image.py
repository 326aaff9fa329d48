"""simclr_image: SimCLR (arXiv:2002.05709) on images: two augmented views, NT-Xent
against the other views of the global batch (gathered from all processes with gradients)."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.simclr import SimCLRSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SimCLRImageConfig(ImageConfig):
    objective: SimCLRSettings = SimCLRSettings(
        proj_hidden=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        temperature=0.2,  # solo-learn's CIFAR value for batches of hundreds; the paper's 0.1 goes with 4096
    )
    # Two crops from one recipe: crops of 20-100% of the area (the paper: 8-100%), flip, colour jitter
    # 0.4 / 0.4 / 0.4 / 0.1 with p 0.8, grayscale p 0.2; no blur, which the paper drops for 32 px
    # CIFAR images (views.0.blur_prob=0.5 gives its ImageNet views).
    views: tuple[ViewSettings, ...] = (ViewSettings(crops=2, min_scale=0.2, blur_prob=0.0),)


@TASKS.register("simclr_image")
class SimCLRImage(ImageTask):
    name = "simclr_image"
    encoder = "convnet | vit | resnet"
    objective = "simclr"
    Config = SimCLRImageConfig
