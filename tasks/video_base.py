"""The video tasks' base: the config, the frame encoder (``encoder_spec``), the data (clips
decoded in DataLoader workers by ``make_item``, cropped on the device by
mmssl.modalities.video.views), the DAVIS root, and which evaluation (mmssl.evaluation.video_report:
DAVIS label propagation and the alignment error between two cameras, each beside a random encoder
and raw pixels).

A task file adds its objective's settings, what one training item holds and its objective.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmssl.config import TrainConfig
from mmssl.data import train_loader
from mmssl.encoders.resnet import ResNetSettings
from mmssl.errors import DataError
from mmssl.modalities.video.views import check_decode_size, decode_view
from mmssl.task import Task
from mmssl.tasks.sections import BACKBONE, VideoEncoders


@dataclasses.dataclass(frozen=True)
class VideoConfig(TrainConfig):
    # Demo defaults: a small stride-8 conv net on 64 px crops of the embedded 128 px videos,
    # a few CPU minutes (configs/ holds the ResNet-18 / ViT-B recipes for Kinetics and DAVIS).
    max_steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    video_column: str = "video"
    backend: str = "auto"  # decord | torchcodec | pyav | auto (the first that works)
    frame_size: int = 64  # training crop side
    decode_size: int = 128  # workers resize decoded frames to this square (the demo's own size); crops come from it
    min_scale: float = 0.3  # random resized crop: smallest fraction of the frame's area
    frame_stride: int = 2  # frames between consecutive sampled frames
    clips_per_video: int = 0  # items per video per pass; 0: as many as its frames hold (frames // clip span)
    # encoder.name: dense_convnet | resnet (at stride 8); mae_video's is a ViT
    encoder: VideoEncoders = VideoEncoders()
    # evaluation: DAVIS label propagation (CRW protocol, arXiv:2006.14613) and view alignment
    davis_root: str | None = None  # demo | demo_ambiguous | PATH; default: demo when --dataset demo
    davis_split: str = "val"
    track_context: int = 20
    track_topk: int = 10
    track_radius: float = 12.0
    track_temperature: float = 0.05
    track_protocol: str = "crw"  # crw (published) | legacy; see mmssl.evaluation.propagation
    track_max_sequences: int | None = None
    overlay: bool = True  # DIR/tracking/<seq>.mp4 with the learned encoder's masks drawn over the frames
    align_max_scenes: int = 8

    renamed: ClassVar[dict[str, str]] = {"backbone": BACKBONE, "dense_widths": "encoder.dense_convnet.widths"}


class VideoTask(Task):
    """Base of the video tasks; subclasses set ``input_kind``, ``clip_frames``, ``on_device`` (make
    the views of a whole batch) and ``build_objective``, and ``make_item`` when an item is more than
    one clip of one camera with one view."""

    modality = "video"
    default_data = "embedded moving-objects videos (2 cameras) + DAVIS-layout masks"
    Config = VideoConfig
    input_kind = "rgb"  # what the encoder reads (mmssl.evaluation.video.INPUTS)

    # encoder -------------------------------------------------------------------------------------
    def channels(self) -> int:
        return 1 if self.input_kind == "lab_l" else 3

    def encoder_spec(self, cfg: VideoConfig) -> dict:
        settings = cfg.encoder.chosen(self.name)
        if isinstance(settings, ResNetSettings):
            return settings.spec(channels=self.channels(), out_stride=8)
        return settings.spec(channels=self.channels())

    def encoder_meta(self, cfg: VideoConfig) -> dict:
        return {"task": self.name, "modality": self.modality, "input": self.input_kind}

    # data ----------------------------------------------------------------------------------------
    def source(self, cfg: VideoConfig, split: str) -> Any:
        from mmssl.modalities.video import open_videos

        return open_videos(cfg.dataset, split, cfg.dataset_config, cfg.video_column)

    def clip_frames(self, cfg: VideoConfig) -> int:
        """Frames one training clip samples (``frame_stride`` apart)."""
        return 1

    def make_item(self, cfg: VideoConfig) -> Callable[[dict, torch.Generator], dict]:
        """source item {"views": [camera, ...]} + generator -> {"frames": uint8 (T, 3, S, S), "view":
        (5,)}: ``clip_frames`` frames of one random camera at the working size, one crop and flip
        for all of them."""
        from mmssl.modalities.video import read_clip

        def item(entry: dict, gen: torch.Generator) -> dict:
            views = entry["views"]
            view = views[int(torch.randint(len(views), (), generator=gen))]
            clip = read_clip(view, self.clip_frames(cfg), cfg.frame_stride, gen, cfg.backend)["frames"]
            frames, crop = self.decode_view(cfg, clip, gen)
            return {"frames": frames, "view": crop}

        return item

    def decode_view(self, cfg: VideoConfig, frames: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``mmssl.modalities.video.views.decode_view`` at this config's ``decode_size`` and ``min_scale``."""
        return decode_view(frames, cfg.decode_size, cfg.min_scale, gen)

    def views_of(self, cfg: VideoConfig, items: list[dict]) -> dict:
        """What the objective reads for a few ``make_item`` outputs, made here as in training (plots, fits)."""
        from torch.utils.data import default_collate

        with torch.no_grad():
            return self.on_device(cfg, default_collate(items))

    def train_loader(self, cfg: VideoConfig, start_batch: int, world: int, rank: int,
                     batch_fn: Callable[[dict], dict] | None = None) -> Any:
        from mmssl.modalities.video import SafeClips, VideoClips

        if cfg.streaming:
            raise DataError("video tasks read map-style datasets; drop --streaming")
        check_decode_size(cfg.decode_size)
        source = VideoClips(self.source(cfg, cfg.split), cfg.clips_per_video,
                            self.clip_frames(cfg) * cfg.frame_stride)
        # a video that fails to decode inside a worker is replaced (and named in a warning), not fatal
        transform = SafeClips(source, self.make_item(cfg))
        return train_loader(source, transform, cfg.batch_size, world, rank, cfg.seed, start_batch, cfg.num_workers,
                            batch_fn=batch_fn)

    # evaluation ----------------------------------------------------------------------------------
    def davis(self, cfg: VideoConfig) -> Any | None:
        """The DAVIS-layout root the evaluation propagates labels on, or None without one."""
        from mmssl.modalities.video import DavisRoot, davis_path, demo_root

        if cfg.davis_root:
            return DavisRoot(davis_path(cfg.davis_root), cfg.davis_split)
        if cfg.dataset == "demo":
            return DavisRoot(demo_root() / "davis", cfg.davis_split)
        return None

    def evaluate(self, cfg: VideoConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        from mmssl.evaluation.video_report import video_report

        return video_report(self, cfg, encoder, out_dir)
