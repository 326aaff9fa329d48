"""jigsaw_image: jigsaw puzzles (arXiv:1603.09246): 3x3 tiles of a crop, shuffled by one of a fixed
set of maximally distant permutations, which a head on the shared encoder's tile features names."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.jigsaw import Jigsaw, JigsawSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import TileEncoders


@dataclasses.dataclass(frozen=True)
class JigsawImageConfig(ImageConfig):
    encoder: TileEncoders = TileEncoders()
    renamed: ClassVar[dict[str, str]] = {k: v for k, v in ImageConfig.renamed.items() if ".vit." not in v}
    objective: JigsawSettings = JigsawSettings(
        tile_dim=128,  # per-tile width and head sized to the demo conv net's 256 features, not AlexNet's
        hidden=512,
        channel_shift=0,  # the paper's 2 px at 64 px tiles is a fraction of a pixel at the demo's 9 px
    )
    # A random resized crop (50-100%) and a flip; the puzzle's own jitter, shifts and shuffling are the objective's.
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.5)


@TASKS.register("jigsaw_image")
class JigsawImage(ImageTask):
    objective = "jigsaw"
    Config = JigsawImageConfig

    def build_objective(self, cfg: JigsawImageConfig, **extra) -> Jigsaw:
        objective = super().build_objective(cfg, **extra)
        self._permutations = objective.permutations.tolist()
        return objective

    def encoder_meta(self, cfg: JigsawImageConfig) -> dict:
        # the permutation set travels with the encoder, so its puzzles can be posed again
        return {**super().encoder_meta(cfg), "jigsaw_permutations": getattr(self, "_permutations", None)}
