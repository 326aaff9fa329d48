"""vicreg_image: VICReg (arXiv:2105.04906) on images: two augmented views, invariance between
their expanded embeddings, variance and covariance regularisation over the global batch."""
from __future__ import annotations

import dataclasses

from mmssl.modalities.vision.augment import ViewSettings
from mmssl.objectives.vicreg import VICRegSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask


@dataclasses.dataclass(frozen=True)
class VICRegImageConfig(ImageConfig):
    objective: VICRegSettings = VICRegSettings(
        # 4x the demo conv net's 256 features, not 8192: a CPU demo pays for the (P, P) covariance
        proj_hidden=1024,
        proj_dim=1024,
    )
    # The paper's views follow BYOL's (solo-learn's CIFAR recipe solarizes both with p 0.1): crops of
    # 40-100% here, flip, jitter 0.4 / 0.4 / 0.2 / 0.1 with p 0.8, grayscale p 0.2; no blur at 32 px.
    views: tuple[ViewSettings, ...] = (
        ViewSettings(crops=2, min_scale=0.4, saturation=0.2, blur_prob=0.0, solarize_prob=0.1),
    )


@TASKS.register("vicreg_image")
class VICRegImage(ImageTask):
    objective = "vicreg"
    Config = VICRegImageConfig
