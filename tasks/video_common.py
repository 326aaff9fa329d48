"""What the video tasks share: the config, the frame encoder, clips decoded in DataLoader
workers and cropped on the device (mmssl.modalities.video.views), and the evaluation every
video encoder gets: DAVIS-2017 label propagation scored with J&F and the temporal alignment
error between two synchronised cameras, each beside a randomly initialised encoder of the same
architecture and raw pixels.

A task file adds its objective's settings, what one training item holds and its objective.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.config import TrainConfig
from mmssl.data import train_loader
from mmssl.encoders.io import build_encoder
from mmssl.errors import DataError
from mmssl.task import Task


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
    backbone: str = "dense_convnet"  # dense_convnet | resnet18 | resnet50 (stride 8) | vit (mae_video)
    dense_widths: str = "32,64,128"
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


def check_decode_size(cfg: VideoConfig) -> None:
    if cfg.decode_size < 1:
        raise DataError(f"decode_size must be a positive number of pixels, not {cfg.decode_size}")


class VideoTask(Task):
    """Base of the video tasks; subclasses set ``input_kind``, ``make_item`` (decode, draw the
    views' parameters), ``on_device`` (make the views of a whole batch) and ``build_objective``."""

    modality = "video"
    default_data = "embedded moving-objects videos (2 cameras) + DAVIS-layout masks"
    Config = VideoConfig
    input_kind = "rgb"  # what the encoder reads (mmssl.evaluation.video.INPUTS)

    # encoder -------------------------------------------------------------------------------------
    def channels(self) -> int:
        return 1 if self.input_kind == "lab_l" else 3

    def encoder_spec(self, cfg: VideoConfig) -> dict:
        if cfg.backbone == "dense_convnet":
            try:
                widths = [int(w) for w in cfg.dense_widths.split(",")]
            except ValueError:
                raise DataError(f"dense_widths must be comma-separated integers, not '{cfg.dense_widths}'") from None
            return {"name": "dense_convnet", "kwargs": {"widths": widths, "channels": self.channels()}}
        if cfg.backbone in ("resnet18", "resnet50"):
            return {"name": "resnet", "kwargs": {"arch": cfg.backbone, "channels": self.channels(), "out_stride": 8}}
        raise DataError(f"backbone must be dense_convnet, resnet18 or resnet50 for {self.name}, not '{cfg.backbone}'")

    def build_encoder(self, cfg: VideoConfig) -> nn.Module:
        return build_encoder(self.encoder_spec(cfg))

    def encoder_meta(self, cfg: VideoConfig) -> dict:
        return {"task": self.name, "modality": self.modality, "input": self.input_kind}

    # data ----------------------------------------------------------------------------------------
    def source(self, cfg: VideoConfig, split: str) -> Any:
        from mmssl.modalities.video import open_videos

        return open_videos(cfg.dataset, split, cfg.dataset_config, cfg.video_column)

    def make_item(self, cfg: VideoConfig) -> Callable[[dict, torch.Generator], dict]:
        """source item (video / views) + generator -> decoded frames and their views' parameters."""
        raise NotImplementedError

    def decode_view(self, cfg: VideoConfig, frames: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoded clip uint8 (..., 3, H, W) -> (its frames at the working size, uint8
        (..., 3, decode_size, decode_size); one random crop and flip for all of them, float (5,))."""
        from mmssl.modalities.video.views import draw_view, to_working_size

        check_decode_size(cfg)
        view = draw_view(frames.shape[-2], frames.shape[-1], cfg.min_scale, gen)
        return to_working_size(frames, cfg.decode_size), view

    def views_of(self, cfg: VideoConfig, items: list[dict]) -> dict:
        """What the objective reads for a few ``make_item`` outputs, made here as in training (plots, fits)."""
        from torch.utils.data import default_collate

        with torch.no_grad():
            return self.on_device(cfg, default_collate(items))

    def clip_frames(self, cfg: VideoConfig) -> int:
        """Frames one training clip samples (``frame_stride`` apart)."""
        return 1

    def train_loader(self, cfg: VideoConfig, start_batch: int, world: int, rank: int) -> Any:
        from mmssl.modalities.video import SafeClips, VideoClips

        if cfg.streaming:
            raise DataError("video tasks read map-style datasets; drop --streaming")
        check_decode_size(cfg)
        source = self.source(cfg, cfg.split)

        source = VideoClips(self.source(cfg, cfg.split), cfg.clips_per_video,
                            self.clip_frames(cfg) * cfg.frame_stride)
        # a video that fails to decode inside a worker is replaced (and named in a warning), not fatal
        transform = SafeClips(source, self.make_item(cfg))
        return train_loader(source, transform, cfg.batch_size, world, rank, cfg.seed, start_batch, cfg.num_workers)

    # evaluation ----------------------------------------------------------------------------------
    def davis(self, cfg: VideoConfig) -> Any | None:
        from mmssl.modalities.video import DavisRoot, davis_path, demo_root

        if cfg.davis_root:
            return DavisRoot(davis_path(cfg.davis_root), cfg.davis_split)
        if cfg.dataset == "demo":
            return DavisRoot(demo_root() / "davis", cfg.davis_split)
        return None

    def alignment_scenes(self, cfg: VideoConfig) -> list[torch.Tensor]:
        """Up to ``align_max_scenes`` multi-view test items as (V, T, 3, H, W) uint8."""
        from mmssl.modalities.video import VideoReader, read_views

        try:
            test = self.source(cfg, cfg.eval_split or "test")
        except DataError:
            return []
        scenes = []
        for i in range(len(test)):
            item = test[i]
            if len(item["views"]) < 2:
                continue
            # the whole of each view, frame by frame (a clip of every frame at stride 1)
            with VideoReader(item["views"][0], cfg.backend) as r:
                n = r.num_frames
            scenes.append(read_views(item, n, 1, torch.Generator().manual_seed(0), cfg.backend)["frames"])
            if len(scenes) >= cfg.align_max_scenes:
                break
        return scenes

    def evaluate(self, cfg: VideoConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        return video_evaluation(cfg, self, encoder, out_dir)


def video_evaluation(cfg: VideoConfig, task: VideoTask, encoder: nn.Module, out_dir: Path | None) -> dict[str, Any]:
    from mmssl.evaluation.video import (
        chance_alignment_error,
        features_for,
        pixel_embedding,
        pooled_embedding,
        track_davis,
        view_alignment,
    )

    torch.manual_seed(cfg.seed + 1)
    random = build_encoder(encoder.spec).eval()
    encoder = encoder.eval()
    kind = getattr(encoder, "meta", {}).get("input", task.input_kind)
    report: dict[str, Any] = {}
    lines = []

    davis = task.davis(cfg)
    if davis is not None:
        settings = {"context": cfg.track_context, "topk": cfg.track_topk, "radius": cfg.track_radius,
                        "temperature": cfg.track_temperature, "max_sequences": cfg.track_max_sequences,
                        "protocol": cfg.track_protocol}
        tracking = {}
        for name, feats in ((task.name, features_for(encoder, kind)), ("random", features_for(random, kind)),
                            ("pixels", features_for("pixels"))):
            learned = name == task.name and out_dir is not None
            result = track_davis(feats, davis, output=Path(out_dir) / "tracking" if learned else None,
                                 overlay=learned and cfg.overlay, **settings)
            tracking[name] = {"J&F": result["summary"]["J&F-Mean"], "J": result["summary"]["J-Mean"],
                              "F": result["summary"]["F-Mean"], "fps": result["fps"]}
            if name == task.name:
                report["tracking_table"] = result["table"]
        report["tracking"] = tracking
        lines.append(f"DAVIS label propagation ({len(davis.sequences)} sequences of {getattr(davis, 'root', 'the DAVIS root')}; "
                     f"{cfg.track_protocol} protocol, context {cfg.track_context}, top-k {cfg.track_topk}, radius {cfg.track_radius}, "
                     f"temperature {cfg.track_temperature})")
        lines.append(f"{'features':<16}{'J&F':>7}{'J':>7}{'F':>7}{'frames/s':>10}")
        for name, r in tracking.items():
            lines.append(f"{name:<16}{100 * r['J&F']:>7.1f}{100 * r['J']:>7.1f}{100 * r['F']:>7.1f}{r['fps']:>10.1f}")

    scenes = task.alignment_scenes(cfg)
    if scenes:
        errors = view_alignment({task.name: pooled_embedding(encoder, kind), "random": pooled_embedding(random, kind),
                                 "pixels": pixel_embedding()}, scenes)
        T = scenes[0].shape[1]
        report["alignment"] = {**errors, "chance": chance_alignment_error(T)}
        if lines:
            lines.append("")
        lines.append(f"alignment error between two cameras (mean |t - t_nn| / T over {len(scenes)} scenes; lower is better)")
        for name, err in report["alignment"].items():
            lines.append(f"{name:<16}{err:>7.3f}")
    if davis is None:  # one line: what was skipped and how to run it
        lines.append(f"no DAVIS root: the evaluation skips label propagation; pass davis_root=ROOT, or run "
                     f"mmssl track --checkpoint {cfg.output_dir} --davis ROOT")
    report["table"] = "\n".join(lines)
    return report
