"""split_brain_image: split-brain autoencoders (arXiv:1611.09842): a conv net split along its channels,
one half reading the lightness L of Lab images and predicting their (a, b) colour classes, the other
reading (a, b) and predicting L classes; the probes read both halves' features together."""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from mmssl.config import ConfigError
from mmssl.encoders.convnet import ConvNetSettings
from mmssl.encoders.split_brain import SplitBrainEncoder
from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.colorization import ColorQuantizer
from mmssl.objectives.split_brain import SplitBrain, SplitBrainSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import EncoderSection


@dataclasses.dataclass(frozen=True)
class SplitBrainEncoders(EncoderSection):
    """The split conv net: ``convnet.widths`` are the whole net's, every stage split into an L half and an
    ab half of half the width each (the paper splits every layer). Conv nets only: the split encoder
    builds its halves from the library's conv net (split ResNet or ViT halves are not built)."""

    name: str = "convnet"
    convnet: ConvNetSettings = ConvNetSettings()


@dataclasses.dataclass(frozen=True)
class SplitBrainImageConfig(ImageConfig):
    # Not the image tasks' 1e-3: two classifiers start from scratch and have to fit within the demo's
    # 800 steps, the reason deepcluster_image also runs at 3e-3.
    lr: float = 3e-3
    encoder: SplitBrainEncoders = SplitBrainEncoders()
    renamed: ClassVar[dict[str, str]] = {k: v for k, v in ImageConfig.renamed.items()
                                         if ".vit." not in v and ".resnet." not in v}
    objective: SplitBrainSettings = SplitBrainSettings(
        # The demo's images have a few flat colours each: 313 k-means centres would mostly split the
        # same colours finely; 32 keep every class's cells numerous enough to learn in a short run.
        ab_bins=32,
    )
    # The images the (a, b) classes are fitted on, before training (k-means over their cells' mean colours).
    quantizer_images: int = 1000
    # The paper's augmentation: crops and flips, no colour changes, since the colours are the targets.
    views: tuple[ViewSettings, ...] = mae_views(None, min_scale=0.5)


@TASKS.register("split_brain_image")
class SplitBrainImageTask(ImageTask):
    encoder = "split_brain (convnet halves: L | ab)"
    objective = "split_brain"
    Config = SplitBrainImageConfig

    def encoder_spec(self, cfg: SplitBrainImageConfig) -> dict:
        return {"name": "split_brain", "kwargs": {"widths": list(cfg.encoder.chosen(self.name).widths)}}

    def check_config(self, cfg: SplitBrainImageConfig) -> None:
        super().check_config(cfg)
        if cfg.quantizer_images < 1:
            raise ConfigError(f"quantizer_images must be at least 1, got {cfg.quantizer_images}")

    @torch.no_grad()
    def fit_quantizer(self, cfg: SplitBrainImageConfig) -> ColorQuantizer:
        """k-means on the mean (a, b) of every feature cell of up to ``quantizer_images`` training images
        (the evaluation's view: resized, no augmentation), the values the targets quantise. The images are
        drawn by the seed, so every process fits the same classes."""
        source = self.source(cfg, cfg.split)
        gen = torch.Generator().manual_seed(cfg.seed)
        picks = torch.randperm(len(source), generator=gen)[:cfg.quantizer_images].tolist()
        view = self.eval_view(cfg)
        side = math.ceil(cfg.image_size / 2 ** len(cfg.encoder.chosen(self.name).widths))  # the map's side
        ab = []
        for start in range(0, len(picks), 256):
            x = torch.stack([view(source[i]["image"]) for i in picks[start:start + 256]])  # (b, 3, S, S)
            cells = F.adaptive_avg_pool2d(SplitBrainEncoder.lab(x)[:, 1:], side)  # (b, 2, side, side)
            ab.append(cells.flatten(2).transpose(1, 2).reshape(-1, 2))
        ab = torch.cat(ab)  # (M, 2)
        k = cfg.objective.ab_bins
        if len(ab) < k:
            raise ConfigError(f"{self.name} fits objective.ab_bins={k} colour classes on the {len(ab)} feature cells "
                              f"of {len(picks)} training images: use fewer bins or more images")
        return ColorQuantizer(k).fit(ab, generator=torch.Generator().manual_seed(cfg.seed))

    def build_objective(self, cfg: SplitBrainImageConfig) -> SplitBrain:
        if min(cfg.objective.ab_bins, cfg.objective.l_bins) < 2:  # before fitting ab_bins classes
            raise ConfigError(f"objective ({self.objective}): split-brain needs ab_bins >= 2 and l_bins >= 2 classes, "
                              f"got {cfg.objective.ab_bins} and {cfg.objective.l_bins}")
        quantizer = self.fit_quantizer(cfg)
        self._centers = quantizer.centers.tolist()
        return super().build_objective(cfg, quantizer=quantizer)

    def encoder_meta(self, cfg: SplitBrainImageConfig) -> dict:
        # the colour classes travel with the encoder, so its L half's predictions can be decoded later
        return {**super().encoder_meta(cfg), "color_centers": getattr(self, "_centers", None)}
