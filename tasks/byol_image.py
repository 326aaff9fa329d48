"""byol_image: BYOL (arXiv:2006.07733): an EMA target network with a cosine momentum
schedule, a predictor on the online branch, a symmetric loss, asymmetric views."""
from __future__ import annotations

import dataclasses

from mmssl.objectives.byol import BYOL
from mmssl.registry import TASKS
from mmssl.tasks.image_common import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class BYOLImageConfig(ImageConfig):
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    base_momentum: float = 0.99
    min_scale: float = 0.2
    blur: bool = True  # the paper's views; false drops the blur (CIFAR recipes)


@TASKS.register("byol_image")
class BYOLImage(ImageTask):
    name = "byol_image"
    encoder = "convnet | vit | resnet"
    objective = "byol"
    Config = BYOLImageConfig

    def views(self, cfg: BYOLImageConfig):
        from mmssl.modalities.vision import BYOLViews

        recipe = BYOLViews(cfg.image_size, min_scale=cfg.min_scale, blur=cfg.blur)
        return lambda img, gen: {"views": recipe(img, gen)}

    def build_objective(self, cfg: BYOLImageConfig) -> BYOL:
        return BYOL(self.build_encoder(cfg), cfg.proj_hidden, cfg.proj_dim, cfg.pred_hidden, cfg.base_momentum)
