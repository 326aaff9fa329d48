"""The end-of-run report of a video task: DAVIS-2017 label propagation scored with J&F (the CRW
protocol, arXiv:2006.14613) and the temporal alignment error between two synchronised cameras,
each for the trained encoder beside a randomly initialised encoder of the same architecture and
raw pixels (``mmssl.evaluation.video``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.errors import DataError
from mmssl.evaluation.video import (
    chance_alignment_error,
    features_for,
    pixel_embedding,
    pooled_embedding,
    track_davis,
    view_alignment,
)


def alignment_scenes(task: Any, cfg: Any) -> list[torch.Tensor]:
    """Up to ``align_max_scenes`` multi-view items of the task's test split as (V, T, 3, H, W) uint8."""
    from mmssl.modalities.video import VideoReader, read_views

    try:
        test = task.source(cfg, cfg.eval_split or "test")
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


def video_report(task: Any, cfg: Any, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
    """The evaluation's JSON-able report (with a ``table`` string); the learned encoder's masks
    (and overlays, with ``cfg.overlay``) go to ``out_dir/tracking``."""
    random = task.random_encoder(cfg, encoder)
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

    scenes = alignment_scenes(task, cfg)
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
