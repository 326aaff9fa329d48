"""tcn_video: time-contrastive networks (Sermanet et al., arXiv:1704.06888).

Frames of one moment attract, frames far apart in time repel. Multi-view (the default when a
dataset has synchronised cameras, as the demo does): the positive of an anchor is the
simultaneous frame of another camera. Single-view: a frame within ``pos_window`` frames of the
anchor in the same video. Negatives are frames at least ``objective.neg_margin_frames`` away from the
anchor, and frames of other videos; triplet loss with semi-hard mining, or n-pairs.
"""
from __future__ import annotations

import dataclasses

import torch

from mmssl.errors import DataError
from mmssl.modalities.video.views import crop_views
from mmssl.objectives.tcn import TCNSettings
from mmssl.registry import TASKS
from mmssl.tasks.video_base import VideoConfig, VideoTask


@dataclasses.dataclass(frozen=True)
class TCNVideoConfig(VideoConfig):
    max_steps: int = 800  # twice the base's: alignment still falls between 400 and 800 steps
    batch_size: int = 8  # videos per step; each gives `anchors` anchor / positive pairs
    anchors: int = 8  # anchor times per video
    frame_stride: int = 4  # frames between consecutive anchor times
    views: str = "auto"  # multi | single | auto (multi when the items have two or more cameras)
    pos_window: int = 2  # single-view: the positive lies within this many frames of the anchor
    min_scale: float = 0.5
    objective: TCNSettings = TCNSettings(
        neg_margin_frames=6,  # anchors 4 frames apart: the neighbouring anchor is no negative, the next one is
    )


@TASKS.register("tcn_video")
class TCNVideo(VideoTask):
    objective = "tcn"
    objective_note = "triplet / n-pairs"
    Config = TCNVideoConfig

    def clip_frames(self, cfg) -> int:
        return cfg.anchors

    def make_item(self, cfg: TCNVideoConfig):
        from mmssl.modalities.video import VideoReader, clip_indices

        if cfg.views not in ("multi", "single", "auto"):
            raise DataError(f"views must be multi, single or auto, not '{cfg.views}'")

        def item(entry: dict, gen: torch.Generator) -> dict:
            views = entry["views"]
            multi = cfg.views == "multi" or (cfg.views == "auto" and len(views) > 1)
            if multi and len(views) < 2:
                raise DataError(f"views=multi, but {entry.get('name', 'an item')} has one camera")
            if multi:
                order = torch.randperm(len(views), generator=gen)[:2].tolist()
                readers = [VideoReader(views[v], cfg.backend) for v in order]
                n = min(r.num_frames for r in readers)
                t = clip_indices(n, cfg.anchors, cfg.frame_stride, gen)
                anchor, positive = (r.get_batch(t) for r in readers)  # the same moments, two cameras
            else:
                view = views[int(torch.randint(len(views), (), generator=gen))]
                readers = [VideoReader(view, cfg.backend)]
                n = readers[0].num_frames
                t = clip_indices(n, cfg.anchors, cfg.frame_stride, gen)
                shift = torch.randint(-cfg.pos_window, cfg.pos_window + 1, t.shape, generator=gen)
                frames = readers[0].get_batch(torch.cat([t, (t + shift).clamp(0, n - 1)]))
                anchor, positive = frames[: len(t)], frames[len(t):]
            for r in readers:
                r.close()
            # each side gets its own crop: the camera, not the crop, is what must not matter
            anchor, anchor_view = self.decode_view(cfg, anchor, gen)
            positive, positive_view = self.decode_view(cfg, positive, gen)
            return {"anchor": anchor, "anchor_view": anchor_view, "positive": positive,
                    "positive_view": positive_view, "times": t}

        return item

    def on_device(self, cfg: TCNVideoConfig, batch: dict) -> dict:
        """uint8 "anchor" / "positive" (B, N, 3, S, S) and their "*_view" (B, 5) -> normalised crops
        (B, N, 3, frame_size, frame_size), one crop and flip per side of each video; "times" (B, N) kept."""
        from mmssl.modalities.vision import normalize

        return {side: normalize(crop_views(batch[side], batch[f"{side}_view"], cfg.frame_size))
                for side in ("anchor", "positive")} | {"times": batch["times"]}

