"""simclr_image: SimCLR (arXiv:2002.05709) on images: two augmented views, NT-Xent
against the other views of the global batch (gathered from all processes with gradients)."""
from __future__ import annotations

import dataclasses

from mmssl.objectives.simclr import SimCLR
from mmssl.registry import TASKS
from mmssl.tasks.image_common import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class SimCLRImageConfig(ImageConfig):
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
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

    def build_objective(self, cfg: SimCLRImageConfig) -> SimCLR:
        return SimCLR(self.build_encoder(cfg), cfg.proj_hidden, cfg.proj_dim, cfg.temperature)
