"""moco_image: MoCo v2 (arXiv:2003.04297): a momentum key encoder and a queue of keys
gathered from all processes, enqueued after each optimizer step."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.moco import MoCo
from mmssl.registry import TASKS
from mmssl.tasks.image_common import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class MoCoImageConfig(ImageConfig):
    max_steps: int = 1600  # its kNN passes raw pixels at 1600 steps (about 8 minutes here), not yet at 800
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    queue_size: int = 4096
    momentum: float = 0.99
    final_momentum: float | None = None  # None: constant momentum; a number: cosine from momentum to it
    symmetric: bool = True  # both views act as query once (solo-learn's CIFAR setting)
    shuffle_bn: int = 16  # shuffle-BN group size (the paper: 32 per GPU); 0: one BatchNorm batch, no shuffle
    # MoCo v2's views are SimCLR's (arXiv:2003.04297): crops of 20-100% here, no blur at 32 px
    # (views.0.blur_prob=0.5 gives the paper's ImageNet views).
    views: tuple[ViewSettings, ...] = (ViewSettings(crops=2, min_scale=0.2, blur_prob=0.0),)


@TASKS.register("moco_image")
class MoCoImage(ImageTask):
    name = "moco_image"
    encoder = "convnet | vit | resnet"
    objective = "moco"
    Config = MoCoImageConfig

    def build_objective(self, cfg: MoCoImageConfig) -> MoCo:
        return MoCo(self.build_encoder(cfg), cfg.proj_hidden, cfg.proj_dim, cfg.queue_size, cfg.momentum,
                    cfg.temperature, cfg.symmetric, cfg.final_momentum, cfg.shuffle_bn)
