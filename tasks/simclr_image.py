"""simclr_image: SimCLR (arXiv:2002.05709) on images: two augmented views, NT-Xent
against the other views of the global batch (gathered from all processes with gradients)."""
from __future__ import annotations

import dataclasses

from mmssl.objectives.simclr import SimCLRSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_common import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SimCLRImageConfig(ImageConfig):
    objective: SimCLRSettings = SimCLRSettings(
        proj_hidden=512,  # twice the demo conv net's 256 features, not ResNet-50's 2048
        temperature=0.2,  # solo-learn's CIFAR value for batches of hundreds; the paper's 0.1 goes with 4096
    )
    min_scale: float = 0.2  # random resized crop scale range (min_scale, 1)
    blur: bool = False  # the paper drops blur for 32 px CIFAR images


@TASKS.register("simclr_image")
class SimCLRImage(ImageTask):
    name = "simclr_image"
    encoder = "convnet | vit | resnet"
    objective = "simclr"
    Config = SimCLRImageConfig

    def views(self, cfg: SimCLRImageConfig):
        from mmssl.modalities.vision import SimCLRViews

        recipe = SimCLRViews(cfg.image_size, min_scale=cfg.min_scale, blur=cfg.blur)
        return lambda img, gen: {"views": recipe(img, gen)}
