"""context_encoder_image: context encoders (arXiv:1604.07379): a conv net reads an image whose centre
(or random blocks, or random regions) is dropped, and a decoder paints the missing pixels back."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.context_encoder import ContextEncoder, ContextEncoderSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import TileEncoders


@dataclasses.dataclass(frozen=True)
class ContextEncoderImageConfig(ImageConfig):
    encoder: TileEncoders = TileEncoders()  # the decoder up-convolves a conv net's feature map
    renamed: ClassVar[dict[str, str]] = {k: v for k, v in ImageConfig.renamed.items() if ".vit." not in v}
    objective: ContextEncoderSettings = ContextEncoderSettings(
        overlap=1,  # the paper's 4 px of overlap at 128 px is 1 px at the demo's 32 px
        # Not the paper's raw pixels: the demo's shapes and backgrounds take random colours, and painting
        # those is most of a raw-pixel loss, so colour fills the features and the kNN follows it.
        norm_target=True,
    )
    # A random resized crop (50-100%) and a flip; the dropped region is the objective's.
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.5)


@TASKS.register("context_encoder_image")
class ContextEncoderImage(ImageTask):
    objective = "context_encoder"
    Config = ContextEncoderImageConfig

    def build_objective(self, cfg: ContextEncoderImageConfig, **extra) -> ContextEncoder:
        return super().build_objective(cfg, image_size=cfg.image_size, **extra)

    def after_training(self, cfg: ContextEncoderImageConfig, objective: ContextEncoder, out_dir: Path) -> None:
        """DIR/plots/reconstruction.png: original / masked / painted test images."""
        self.plot_test_reconstructions(cfg, objective, out_dir, f"context_encoder_image, {cfg.objective.mask} mask")
