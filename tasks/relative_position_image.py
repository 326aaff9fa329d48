"""relative_position_image: context prediction (arXiv:1505.05192): the centre patch of a 3x3 grid
with gaps and one of its 8 neighbours, each read by the shared encoder; a head on the two features
names where the neighbour was."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mmssl.config import ConfigError
from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.relative_position import RelativePositionSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import TileEncoders


@dataclasses.dataclass(frozen=True)
class RelativePositionImageConfig(ImageConfig):
    encoder: TileEncoders = TileEncoders()
    renamed: ClassVar[dict[str, str]] = {k: v for k, v in ImageConfig.renamed.items() if ".vit." not in v}
    objective: RelativePositionSettings = RelativePositionSettings(
        # The paper's 96 px patches, 48 px gaps and 7 px jitter fill about 400 px images; at the demo's
        # 32 px the grid keeps roughly its proportions (gap 3/8 of a patch, jitter 1/8) and fills the crop.
        patch_size=8,
        gap=3,
        jitter=1,
        patch_dim=256,  # fc6, fc7 and fc8 sized to the demo conv net's 256 features, not AlexNet's 4096
        hidden=512,
        # Every neighbour of each centre, as the authors' code pairs every two adjacent patches: at 8 px
        # most single pairs hold too little to name a place, and one pair an image leaves the
        # classifier near chance for hundreds of steps (docs/results/image.md has the comparison).
        pairs=8,
    )
    # A random resized crop (50-100%) and a flip; the grid, its jitter and the colour dropping are the objective's.
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.5)


@TASKS.register("relative_position_image")
class RelativePositionImage(ImageTask):
    objective = "relative_position"
    Config = RelativePositionImageConfig

    def check_config(self, cfg: RelativePositionImageConfig) -> None:
        super().check_config(cfg)
        o = cfg.objective
        need = 3 * o.patch_size + 2 * o.gap + 2 * o.jitter
        size = self.view_settings(cfg)[0].size
        if need > size:
            raise ConfigError(f"relative position's grid does not fit the {size} px crop: 3 patches of {o.patch_size} "
                              f"+ 2 gaps of {o.gap} + jitter {o.jitter} on each side need {need} px "
                              "(lower objective.patch_size / gap / jitter or raise image_size)")
