"""mae_video: VideoMAE (Tong et al., arXiv:2203.12602): a ViT on (2, 8, 8) tubelets with 90% of
the spatial positions masked at every time index (tube masking), through the same MAE
objective as images and spectrograms."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch
from einops import rearrange

from mmssl.errors import DataError
from mmssl.modalities.video.views import crop_views
from mmssl.objectives.mae import MAE, MAESettings
from mmssl.registry import TASKS
from mmssl.tasks.sections import DEMO_VIT, VIT_KEYS, ViTEncoder
from mmssl.tasks.video_base import VideoConfig, VideoTask


@dataclasses.dataclass(frozen=True)
class MAEVideoConfig(VideoConfig):
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    clip_len: int = 8
    frame_stride: int = 2
    # (pt, ph, pw) = (2, 8, 8) tubelets (the paper: 2x16x16 at 224 px)
    encoder: ViTEncoder = ViTEncoder(vit=dataclasses.replace(DEMO_VIT, patch=(2, 8, 8)))
    objective: MAESettings = MAESettings(
        mask_ratio=0.9,  # VideoMAE's ratio: a masked tube cannot be copied from its neighbour in time
        decoder_dim=128,  # as wide as the demo encoder (128), not 512: a few CPU minutes per run
        decoder_depth=2,  # half the demo encoder's 4 blocks: MAE's decoder is the lighter half
        decoder_heads=4,  # 32 dims per head, as the demo encoder's
    )

    renamed: ClassVar[dict[str, str]] = {"backbone": "encoder.name", **VIT_KEYS, "tubelet": "encoder.vit.patch (pt,ph,pw)"}


@TASKS.register("mae_video")
class MAEVideo(VideoTask):
    encoder = "vit (tubelets)"
    objective = "mae"
    objective_note = "tube masking"
    Config = MAEVideoConfig

    def encoder_spec(self, cfg: MAEVideoConfig) -> dict:
        spec = cfg.encoder.chosen(self.name).spec([cfg.clip_len, cfg.frame_size, cfg.frame_size], channels=3)
        patch = spec["kwargs"]["patch"]
        if cfg.clip_len % patch[0] or cfg.frame_size % patch[1] or cfg.frame_size % patch[2]:
            raise DataError(f"clip_len {cfg.clip_len} and frame_size {cfg.frame_size} must be multiples of the tubelet {patch}")
        return spec

    def clip_frames(self, cfg) -> int:
        return cfg.clip_len

    def on_device(self, cfg: MAEVideoConfig, batch: dict) -> dict:
        """uint8 "frames" (B, T, 3, S, S) + "view" (B, 5) -> normalised "input" (B, 3, T, frame_size,
        frame_size): one crop and flip per clip, channels first, then time (the tubelets' layout)."""
        from mmssl.modalities.vision import normalize

        x = normalize(crop_views(batch["frames"], batch["view"], cfg.frame_size))
        return {"input": rearrange(x, "b t c h w -> b c t h w")}

    def build_objective(self, cfg: MAEVideoConfig) -> MAE:
        return super().build_objective(cfg, masking="tube")

    def after_training(self, cfg: MAEVideoConfig, objective: MAE, out_dir: Path) -> None:
        """DIR/plots/reconstruction.png: the frames of test clips, masked, and reconstructed."""
        from mmssl.evaluation.plots import plot_reconstructions
        from mmssl.modalities.vision import denormalize

        try:
            source = self.source(cfg, cfg.eval_split or "test")
        except DataError:
            source = self.source(cfg, cfg.split)
        whole = dataclasses.replace(cfg, min_scale=1.0)
        make = self.make_item(whole)
        picks = torch.linspace(0, len(source) - 1, min(4, len(source))).long().tolist()
        x = self.views_of(whole, [make(source[i], torch.Generator().manual_seed(i)) for i in picks])["input"]

        def frames(v: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B * 2, 3, H, W): first and last frame
            return torch.stack([v[:, :, 0], v[:, :, -1]], dim=1).flatten(0, 1)

        plot_reconstructions(objective, x, cfg.seed, out_dir / "plots" / "reconstruction.png", denormalize=denormalize,
                             panels=frames, title=f"mae_video, tube mask ratio {cfg.objective.mask_ratio} "
                                                  "(first and last frame of each clip)")
