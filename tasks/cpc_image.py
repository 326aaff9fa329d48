"""cpc_image: Contrastive Predictive Coding on images (CPC v2, arXiv:1905.09272): a grid of
overlapping patches, each read alone by the encoder; a masked-convolution context over the rows
predicts the patches 1..K rows below, scored by the same InfoNCE as cpc_audio. The image probes
read the mean patch feature."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from mmssl.config import ConfigError
from mmssl.encoders.convnet import ConvNetSettings
from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.cpc_image import CPCImageSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import TileEncoders


@dataclasses.dataclass(frozen=True)
class CPCImageConfig(ImageConfig):
    # Each of 49 patches per image is encoded and scored against its negatives: a step costs several
    # times a whole-image task's, so the demo takes fewer of them (a few CPU minutes).
    max_steps: int = 300
    # Conv nets only: each patch is an image of its own, which a ViT laid out for whole crops does not fit.
    # Three stages take an 8 px patch down to one cell (a fourth would run on a 1x1 map).
    encoder: TileEncoders = TileEncoders(convnet=ConvNetSettings(widths=(32, 64, 128)))
    renamed: ClassVar[dict[str, str]] = {k: v for k, v in ImageConfig.renamed.items() if ".vit." not in v}
    objective: CPCImageSettings = CPCImageSettings(
        # The paper's 7x7 grid of half-overlapping patches, scaled to the demo's 32 px crops: 8 px
        # patches 4 px apart, and its 5 rows ahead.
        patch_size=8,
        patch_stride=4,
        # Cosine similarity / 0.1 instead of the paper's dot product, as cpc_audio's demo: it leaves
        # the initial plateau sooner on a run of a few hundred steps.
        temperature=0.1,
        # Each patch centred and scaled to unit RMS. The demo's images each have a few flat colours, so
        # a patch's brightness and colour name its image among the batch's other images, where most
        # negatives come from: with raw patches the predictions learn to pick the image, not what lies
        # below, and the features do not learn the shapes.
        patch_norm=True,
        context_dim=64,  # a quarter of the conv net's width keeps the context a small part of a step
    )
    # A random resized crop (50-100%) and a flip, no colour changes: the patches' own colours stay a
    # cue, as in the paper's patches, which it augments one by one at ImageNet scale.
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.5)


@TASKS.register("cpc_image")
class CPCImageTask(ImageTask):
    encoder = "convnet | resnet (per patch of a grid)"
    objective = "cpc_image"
    Config = CPCImageConfig

    def encoder_spec(self, cfg: CPCImageConfig) -> dict:
        """The chosen conv net reads each patch of the objective's grid (``patch_grid``)."""
        o = cfg.objective
        return {"name": "patch_grid", "kwargs": {"encoder": super().encoder_spec(cfg), "patch": o.patch_size,
                                                 "stride": o.patch_stride, "standardize": o.patch_norm}}

    def check_config(self, cfg: CPCImageConfig) -> None:
        super().check_config(cfg)
        o = cfg.objective
        size = self.view_settings(cfg)[0].size
        if o.patch_size < 1 or o.patch_stride < 1 or o.patch_size > size:
            raise ConfigError(f"cpc_image's patches must be 1..{size} px (the crop) with a positive stride, "
                              f"not objective.patch_size={o.patch_size}, objective.patch_stride={o.patch_stride}")
        rows = (size - o.patch_size) // o.patch_stride + 1
        if rows <= o.steps:
            raise ConfigError(f"a {size} px crop gives {rows} rows of {o.patch_size} px patches {o.patch_stride} px "
                              f"apart, too few to predict objective.steps={o.steps} rows ahead (need more than "
                              f"{o.steps})")
