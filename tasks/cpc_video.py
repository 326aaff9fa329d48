"""cpc_video: Contrastive Predictive Coding over time on video (dense predictive coding, arXiv:1909.04656):
a clip's frame features are sequences over time (one per cell of the frame encoder's map with
``objective.spatial=dense``, the paper's; one per clip of pooled frame features with ``pooled``), an
autoregressive context reads them, and the same InfoNCE as cpc_audio scores the predictions of the next
frames. The frame encoder is evaluated by DAVIS label propagation, beside a random encoder and raw pixels."""
from __future__ import annotations

import dataclasses

from mmssl.config import ConfigError
from mmssl.modalities.video.views import crop_views
from mmssl.objectives.cpc_video import CPCVideoSettings
from mmssl.registry import TASKS
from mmssl.tasks.video_base import VideoConfig, VideoTask


@dataclasses.dataclass(frozen=True)
class CPCVideoConfig(VideoConfig):
    max_steps: int = 200  # 16 clips of 8 frames a step: a few CPU minutes, the evaluation's tracking besides
    clip_len: int = 8  # frames per clip, ``frame_stride`` apart: 5 contexts for 3 steps ahead
    objective: CPCVideoSettings = CPCVideoSettings(
        # Cosine similarity / 0.1 instead of the paper's dot product, as the other CPC demos: it leaves
        # the initial plateau sooner on a run of a few hundred steps.
        temperature=0.1,
        # Pooled frames, not the paper's dense cells: on the embedded videos every dense variant tried
        # (negatives by cell or clip, whole-cell jitter, a conv-GRU context) left the encoder tracking worse
        # than pooled CPC and than its random initialisation; docs/results/video.md has the diagnosis.
        spatial="pooled",
    )


@TASKS.register("cpc_video")
class CPCVideoTask(VideoTask):
    objective = "cpc_video"
    Config = CPCVideoConfig

    def clip_frames(self, cfg: CPCVideoConfig) -> int:
        return cfg.clip_len

    def check_config(self, cfg: CPCVideoConfig) -> None:
        super().check_config(cfg)
        if cfg.clip_len <= cfg.objective.steps:
            raise ConfigError(f"clip_len={cfg.clip_len} frames leave no context to predict objective.steps="
                              f"{cfg.objective.steps} frames ahead (need more than {cfg.objective.steps})")

    def on_device(self, cfg: CPCVideoConfig, batch: dict) -> dict:
        """uint8 "frames" (B, T, 3, S, S) + "view" (B, 5) -> normalised "frames" (B, T, 3, frame_size,
        frame_size), one crop and flip per clip."""
        from mmssl.modalities.vision import normalize

        return {"frames": normalize(crop_views(batch["frames"], batch["view"], cfg.frame_size))}
