"""Command line: ``train.py`` / ``mmssl train``, ``mmssl tasks``, ``mmssl probe``, ``mmssl track``, ``mmssl bench``.

Every expected failure (unknown task, bad override, missing data, ...) ends in
one ``error:`` line and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmssl import config as config_lib
from mmssl.errors import MmsslError
from mmssl.evaluation.audio import POOLINGS
from mmssl.evaluation.knn import READOUTS
from mmssl.evaluation.linear import PROTOCOLS as LINEAR_PROTOCOLS
from mmssl.evaluation.propagation import PROTOCOLS as TRACK_PROTOCOLS
from mmssl.registry import TASKS
from mmssl.run import check_data, load_tasks, resolve_config, run_training


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="demo (default), a Hugging Face Hub id, or a local folder")
    p.add_argument("--dataset-config", help="the Hub dataset's config name (e.g. clean)")
    p.add_argument("--split", help="the training split (default train)")
    p.add_argument("--eval-split", help="the split scored by the evaluation (default test)")
    p.add_argument("--label-column", help="column holding the label to probe (e.g. speaker_id)")
    p.add_argument("--audio-column", help="column holding the audio (default audio), for audio tasks")
    p.add_argument("--image-column", help="column holding the image (default image), for image tasks")
    p.add_argument("--video-column", help="column holding the video path or bytes (default video), for video tasks")


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("dataset", "dataset_config", "split", "eval_split", "label_column", "audio_column", "image_column",
             "video_column", "output_dir", "max_steps", "log_with", "readout", "init", "utterance_pooling",
             "linear_protocol", "finetune_steps", "finetune_lr")
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    for flag in ("streaming", "compile"):
        if getattr(args, flag, False):
            out[flag] = True
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (exit 2) like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def train_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Pretrain an encoder: a task = data + encoder + objective.")
    p.add_argument("--task", required=True, help="a registered task (python -m mmssl tasks)")
    p.add_argument("--config", help="a YAML recipe of overrides (configs/*.yaml)")
    _data_args(p)
    p.add_argument("--streaming", action="store_true", help="stream the Hub dataset instead of downloading it")
    p.add_argument("--output-dir", help="run directory (default runs/<task>); rerunning with it resumes")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--log-with", help="also log to tensorboard or wandb")
    p.add_argument("--compile", action="store_true", help="run the objective under torch.compile")
    p.add_argument("--init", help="start the encoder from a checkpoint: an MAE / timm / transformers ViT "
                   "(.pth, .bin, .safetensors or a transformers folder) or torchvision ResNet weights")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, checked against field types")
    return p


def train_main(argv: list[str] | None = None) -> int:
    # key=value overrides may come before, between and after the options
    args = train_parser().parse_intermixed_args(argv)
    return _guard(lambda: run_training(*resolve_config(args.task, args.config, _flag_overrides(args), args.overrides)))


def cmd_tasks(_: argparse.Namespace) -> None:
    load_tasks()
    rows = [("task", "modality", "encoder", "objective", "default data")]
    for name in TASKS.names():
        t = TASKS.get(name)
        objective = f"{t.objective} ({t.objective_note})" if t.objective_note else t.objective
        rows.append((name, t.modality, t.encoder_names(), objective, t.default_data))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])


def cmd_probe(args: argparse.Namespace) -> None:
    """Evaluate a trained encoder (or the random baseline) with its task's probes on any dataset."""
    from mmssl.encoders.io import encoder_config, load_encoder

    load_tasks()
    meta = encoder_config(args.checkpoint)
    task = TASKS.get(meta["task"])()
    saved = Path(args.checkpoint) / "config.yaml"
    import yaml

    base = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    cfg = config_lib.apply_overrides(task.default_config(), {k: v for k, v in base.items() if v is not None})
    flags = _flag_overrides(args)
    for flag, modality in (("readout", "image"), ("linear_protocol", "image and audio"), ("finetune_steps", "image"),
                           ("finetune_lr", "image"), ("utterance_pooling", "audio")):
        if flag in flags and not hasattr(cfg, flag):
            raise MmsslError(f"--{flag.replace('_', '-')} applies to {modality} tasks; {meta['task']} has no {flag}")
    if flags.get("dataset") not in (None, "demo"):  # a new dataset: its own splits and columns
        cfg = dataclasses.replace(cfg, split="train", eval_split=None, label_column=None)
    cfg = config_lib.apply_overrides(cfg, flags)
    settings = dict(config_lib.parse_override(o) for o in args.settings)
    for key in settings:
        if not key.startswith("finetune_") or not hasattr(cfg, key):
            raise MmsslError(f"probe takes key=value only for an image task's fine-tuning settings (finetune_*), "
                             f"and {key} is not one of {meta['task']}'s")
    cfg = config_lib.apply_overrides(cfg, settings)
    if task.modality == "image":
        from mmssl.tasks.image_base import check_finetune

        check_finetune(cfg)
    cfg, notes = check_data(task, cfg)  # the data checked and its label column chosen
    if task.modality in ("audio", "image") and cfg.dataset != "demo" and cfg.label_column is None:
        raise MmsslError(f"{cfg.dataset}: no label column found (none named label, speaker_id or speaker, and "
                         f"not exactly one ClassLabel column); pass --label-column COLUMN")
    for line in notes:
        print(line)
    report = task.evaluate(cfg, load_encoder(args.checkpoint), Path(args.checkpoint))
    print(report["table"])
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.report}")


def _saved_seed(path: str) -> int:
    """The seed a run directory (or its encoder/ folder) was trained with; 0 where none is saved."""
    import yaml

    for folder in (Path(path), Path(path).parent):
        saved = folder / "config.yaml"
        if saved.is_file():
            return int((yaml.safe_load(saved.read_text()) or {}).get("seed", 0))
    return 0


def _tracking_features(checkpoint: str | None, baseline: str | None, seed: int | None = None) -> tuple[str, Any]:
    """(name, frames -> dense features) for --checkpoint DIR | random | random:DIR, or --baseline pixels.
    An untrained encoder is drawn from ``seed`` + 1 (``seed``: DIR's training seed when None, else 0), as a
    run's own evaluation draws its random column, without moving the global random stream."""
    import torch

    from mmssl.encoders.io import build_encoder, load_encoder
    from mmssl.evaluation.video import features_for

    pretrained = checkpoint is not None and checkpoint != "random" and not checkpoint.startswith("random:")
    if seed is not None and (baseline is not None or pretrained):
        raise MmsslError("--seed draws an untrained encoder (--checkpoint random or random:DIR); "
                         "a trained checkpoint and the pixel baseline have none to draw")
    if baseline is not None:
        if baseline != "pixels":
            raise MmsslError(f"--baseline must be pixels, not '{baseline}'")
        return "pixels (Lab)", features_for("pixels")
    if checkpoint is None:
        raise MmsslError("pass --checkpoint DIR (or random, or random:DIR), or --baseline pixels")
    path = checkpoint if pretrained else checkpoint[len("random:"):]
    if pretrained:
        encoder = load_encoder(path)
        return path, features_for(encoder, encoder.meta.get("input", "rgb"))
    draw = (seed if seed is not None else _saved_seed(path) if path else 0) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(draw)
        if not path:  # "random": the colorize_video demo architecture
            load_tasks()
            task = TASKS.get("colorize_video")()
            encoder = build_encoder(task.encoder_spec(task.default_config())).eval()
            return f"random (colorize_video encoder, seed {draw})", features_for(encoder, task.input_kind)
        encoder = load_encoder(path, pretrained=False)
    return f"random ({path} architecture, seed {draw})", features_for(encoder, encoder.meta.get("input", "rgb"))


def cmd_track(args: argparse.Namespace) -> None:
    """Semi-supervised DAVIS label propagation with an encoder's features, scored with J&F."""
    import torch

    from mmssl.evaluation.video import track_davis
    from mmssl.modalities.video import DavisRoot, davis_path

    for name in ("context", "topk"):
        if getattr(args, name) < 1:
            raise MmsslError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.temperature <= 0 or args.radius < 0:
        raise MmsslError("--temperature must be positive and --radius non-negative")
    davis = DavisRoot(davis_path(args.davis), args.split)
    label, features = _tracking_features(args.checkpoint, args.baseline, args.seed)
    torch.manual_seed(0)
    output = args.output
    result = track_davis(features, davis, context=args.context, topk=args.topk, radius=args.radius,
                         temperature=args.temperature, output=output, overlay=output is not None and not args.no_overlay,
                         max_sequences=args.max_sequences, protocol=args.protocol)
    print(f"features: {label}; {result['sequences']} sequences, {result['fps']:.1f} frames/s\n{result['table']}")
    if output is not None:
        print(f"masks in {output}/<sequence>/*.png" + ("" if args.no_overlay else f", overlays in {output}/<sequence>.mp4"))
    if args.report:
        report = {"features": label,
                  "settings": {k: getattr(args, k) for k in ("protocol", "context", "topk", "radius", "temperature")},
                  **{k: result[k] for k in ("summary", "fps", "sequences")}}
        Path(args.report).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.report}")


def cmd_bench(args: argparse.Namespace) -> None:
    """Training throughput, peak memory and FLOPs per task beside peer implementations, clip
    reading per video backend and label propagation speed; a table, and JSON with --report."""
    from mmssl import bench

    report = bench.run(args.tasks, size=args.size, device=args.device, steps=args.steps, warmup=args.warmup,
                       repeats=args.repeats, compile=args.compile, seconds=args.seconds, dataset=args.dataset,
                       points=args.points, pairs=args.pairs, log=lambda line: print(line, file=sys.stderr),
                       overrides=args.set, mixed_precision=args.mixed_precision)
    print(report["table"])
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.report}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "train":
        return train_main(argv[1:])
    p = _Parser(prog="mmssl", description="mmssl: self-supervised learning for vision, audio and video")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="pretrain (same arguments as train.py)")
    sub.add_parser("tasks", help="list the registered tasks").set_defaults(fn=cmd_tasks)
    probe = sub.add_parser("probe", help="linear probes of a trained encoder on a labelled dataset")
    probe.add_argument("--checkpoint", required=True, help="a run directory (with encoder/) or an encoder folder")
    _data_args(probe)
    probe.add_argument("--readout", choices=READOUTS,
                       help="image tasks: probe the pooled features or the token map (default: the run's setting)")
    probe.add_argument("--utterance-pooling", choices=POOLINGS,
                       help="audio tasks: pool an utterance's frames by mean+std (meanstd) or mean (default: the run's)")
    probe.add_argument("--linear-protocol", choices=LINEAR_PROTOCOLS,
                       help="image and audio tasks: the linear probe, L-BFGS with its L2 chosen on held-out train "
                            "(lbfgs), at a fixed L2 (lbfgs_fixed) or, for images, MAE's (mae) (default: the run's)")
    probe.add_argument("--finetune-steps", type=int,
                       help="image tasks: also fine-tune end to end for this many steps, the trained encoder "
                            "beside the same architecture from random initialisation (default: the run's setting)")
    probe.add_argument("--finetune-lr", type=float, help="image tasks: the fine-tuning's rate (default: the run's setting)")
    probe.add_argument("--report", help="also write the report as JSON here")
    probe.add_argument("settings", nargs="*", metavar="finetune_KEY=value",
                       help="image tasks: the fine-tuning's other settings (finetune_layer_decay, finetune_drop_path, "
                            "finetune_mixup, finetune_cutmix, finetune_label_smoothing)")
    probe.set_defaults(fn=cmd_probe)
    track = sub.add_parser("track", help="DAVIS label propagation with an encoder's features, scored with J&F")
    track.add_argument("--checkpoint", help="a run directory, 'random' (the colorize_video encoder untrained) "
                                            "or 'random:DIR' (DIR's architecture untrained)")
    track.add_argument("--baseline", help="pixels: propagate with raw Lab pixels instead of an encoder")
    track.add_argument("--seed", type=int, help="an untrained encoder (random, random:DIR) is drawn from SEED + 1, as a "
                                                "run's evaluation draws its random column (default: DIR's seed, else 0)")
    track.add_argument("--davis", required=True, help="a DAVIS-2017 root (JPEGImages/480p, Annotations/480p, "
                                                      "ImageSets/2017), demo or demo_ambiguous")
    track.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt (default val)")
    track.add_argument("--output", help="write OUT/<seq>/00000.png ... and OUT/<seq>.mp4 overlays here")
    track.add_argument("--no-overlay", action="store_true", help="skip the overlay videos")
    track.add_argument("--report", help="also write the scores as JSON here")
    track.add_argument("--context", type=int, default=20, help="recent frames kept as context besides the first")
    track.add_argument("--topk", type=int, default=10, help="affinities kept per target position")
    track.add_argument("--radius", type=float, default=12, help="local window radius in feature cells")
    track.add_argument("--temperature", type=float, default=0.05, help="softmax temperature of the affinities")
    track.add_argument("--max-sequences", type=int, help="only the first N sequences")
    track.add_argument("--protocol", choices=TRACK_PROTOCOLS, default="crw",
                       help="crw: CRW's published label propagation (default); legacy: mmssl's earlier variant "
                            "(area-averaged first-frame labels, frame 0 within the radius, no padding, radius <=)")
    track.set_defaults(fn=cmd_track)
    bench = sub.add_parser("bench", help="training throughput, memory and FLOPs per task, beside peer implementations")
    bench.add_argument("--tasks", nargs="+", metavar="TASK", help="any of mae_image mae_video simclr_image "
                       "clip_loading tracking (the default: all of these), and learning (kNN against seconds for "
                       "every image task beside a plain loop) or learning:TASK for one image task")
    bench.add_argument("--size", help="tiny, small (about 1-3 s a step on a 2-core CPU; the default on a CPU) "
                                       "or full (the papers' sizes; the default on a GPU)")
    bench.add_argument("--device", help="cpu or cuda (default: cuda where available)")
    bench.add_argument("--steps", type=int, default=2, help="timed training steps per repeat (default 2)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps before the first repeat, besides the "
                                                                    "FLOP-counting step (default 3: the heap settles)")
    bench.add_argument("--repeats", type=int, default=5, help="repeats; samples/s is their median (default 5)")
    bench.add_argument("--compile", action="store_true", help="also time our objectives under torch.compile")
    bench.add_argument("--seconds", type=float, default=240, help="learning rows: training seconds per side (default 240)")
    bench.add_argument("--dataset", default="demo", help="learning rows: demo, or a folder with train/ and test/ "
                                                         "class folders")
    bench.add_argument("--points", type=int, default=6, help="learning rows: kNN points per curve (default 6)")
    bench.add_argument("--pairs", type=int, default=1, help="learning rows: run the library and the plain loop this "
                       "many times in turn and report the means, each pair beside them (default 1)")
    bench.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="learning rows: task settings changed from the defaults (e.g. views.0.crop=continuous); "
                            "the peers read theirs from the task's")
    bench.add_argument("--mixed-precision", choices=["no", "bf16"],
                       default=os.environ.get("ACCELERATE_MIXED_PRECISION", "no"),
                       help="learning rows: train both sides at this precision (default: accelerate launch's "
                            "--mixed_precision, else no); bf16 autocast speeds a CPU with native bf16 too")
    bench.add_argument("--report", help="also write the results as JSON here")
    bench.set_defaults(fn=cmd_bench)
    args = p.parse_args(argv)
    return _guard(lambda: args.fn(args))


def _one_line(e: BaseException) -> str:
    """Errors re-raised from DataLoader workers carry the worker's traceback: keep its last line."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", text)
    return text.splitlines()[0] if text else type(e).__name__


def _guard(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except MmsslError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0
