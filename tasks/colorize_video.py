"""colorize_video: tracking emerges by colorizing videos (Vondrick et al., arXiv:1806.09594).

A grayscale target frame points into grayscale reference frames through softmax affinities of
stride-8 features and copies their quantised colours; the loss is the cross-entropy on the
target's own colour clusters. The same pointer later copies segmentation masks: tracking.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from mmssl.modalities.video.views import crop_views
from mmssl.objectives.colorization import Colorization, ColorizationSettings, ColorQuantizer, rgb_to_lab
from mmssl.registry import TASKS
from mmssl.tasks.video_base import VideoConfig, VideoTask


@dataclasses.dataclass(frozen=True)
class ColorizeVideoConfig(VideoConfig):
    max_steps: int = 1500  # tracking keeps improving well past the base's 400 steps
    objective: ColorizationSettings = ColorizationSettings()
    clusters: int = 16  # k-means colour clusters of Lab ab, fitted before training (the paper's 16)
    quantizer_frames: int = 256  # training frames the colour clusters are fitted on (8 per sampled video)
    frame_stride: int = 3


@TASKS.register("colorize_video")
class ColorizeVideo(VideoTask):
    encoder = "dense_convnet | resnet (stride 8, L input)"
    objective = "colorization"
    Config = ColorizeVideoConfig
    input_kind = "lab_l"

    def clip_frames(self, cfg) -> int:
        return cfg.objective.num_refs + 1

    def on_device(self, cfg: ColorizeVideoConfig, batch: dict) -> dict:
        """uint8 "frames" (B, R + 1, 3, S, S) + "view" (B, 5) -> float [0, 1] RGB "frames"
        (B, R + 1, 3, frame_size, frame_size), references first, target last; one crop per clip,
        so positions correspond across its frames (the objective turns them into Lab)."""
        return {"frames": crop_views(batch["frames"], batch["view"], cfg.frame_size)}

    def fit_quantizer(self, cfg: ColorizeVideoConfig) -> ColorQuantizer:
        """k-means on the ab values of training frames, averaged over stride-8 cells as the targets are."""
        from mmssl.modalities.video import read_clip

        source = self.source(cfg, cfg.split)
        gen = torch.Generator().manual_seed(cfg.seed)
        per_clip = 8  # frames read from each sampled video, spread over it
        picks = torch.randint(len(source), (max(1, -(-cfg.quantizer_frames // per_clip)),), generator=gen).tolist()
        ab = []
        for i in picks:
            views = source[i]["views"]
            clip = read_clip(views[0], per_clip, 4, gen, cfg.backend)["frames"]  # (8, 3, H, W)
            frames, crop = self.decode_view(cfg, clip, gen)
            clip = crop_views(frames[None], crop[None], cfg.frame_size)[0]
            lab = rgb_to_lab(clip)[:, 1:]  # (8, 2, S, S)
            ab.append(F.avg_pool2d(lab, 8, ceil_mode=True).flatten(2).transpose(1, 2).reshape(-1, 2))
        return ColorQuantizer(cfg.clusters).fit(torch.cat(ab), generator=torch.Generator().manual_seed(cfg.seed))

    def build_objective(self, cfg: ColorizeVideoConfig) -> Colorization:
        quantizer = self.fit_quantizer(cfg)
        self._centers = quantizer.centers.tolist()
        return super().build_objective(cfg, quantizer=quantizer)

    def encoder_meta(self, cfg: ColorizeVideoConfig) -> dict:
        # the colour clusters travel with the encoder, so its colour predictions can be decoded later
        return {**super().encoder_meta(cfg), "color_centers": getattr(self, "_centers", None)}
