"""mae_image: masked autoencoders (arXiv:2111.06377): a ViT encodes the visible 25% of
the patches, a light decoder reconstructs the per-patch normalised pixels of the rest."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.mae import MAE, MAESettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import DEMO_VIT, ViTEncoder


@dataclasses.dataclass(frozen=True)
class MAEImageConfig(ImageConfig):
    # Demo defaults: 8 x 8 patches, so a 32 px image is 16 tokens and the encoder sees 4.
    lr: float = 1.5e-3
    encoder: ViTEncoder = ViTEncoder(vit=dataclasses.replace(DEMO_VIT, patch=(8,)))
    # MAE's only augmentation: a random resized crop (20-100%) and a flip (bilinear; the paper: bicubic).
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.2)
    max_steps: int = 6400
    objective: MAESettings = MAESettings(
        decoder_dim=64,  # narrow, to keep the CPU steps cheap (the demo encoder is 128 wide)
        decoder_depth=4,  # half the paper's 8 blocks, for the same reason
        decoder_heads=4,  # 16 heads would leave 4 dims each at width 64
    )

    renamed: ClassVar[dict[str, str]] = {k: v for k, v in ImageConfig.renamed.items() if v.startswith(("encoder.vit", "encoder.name"))}


@TASKS.register("mae_image")
class MAEImage(ImageTask):
    objective = "mae"
    Config = MAEImageConfig

    def after_training(self, cfg: MAEImageConfig, objective: MAE, out_dir: Path) -> None:
        """DIR/plots/reconstruction.png: original / masked / reconstruction of test images."""
        self.plot_test_reconstructions(cfg, objective, out_dir, f"mae_image, mask ratio {cfg.objective.mask_ratio}")
