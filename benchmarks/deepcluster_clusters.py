"""What DeepCluster's k-means groups images by: the training images' features from a saved encoder (or
the task's random encoder) go through the objective's own clustering (PCA-whitening, L2 normalisation,
k-means), and for the class and the generator's nuisances the script prints the share of the factor's
entropy the clusters determine, (I(clusters; factor) - the same for shuffled clusters) / H(factor),
averaged over three k-means seeds.

    python benchmarks/deepcluster_clusters.py ENCODER_DIR|random [--glyphs] [key=value ...]

The embedded shapes by default, with the factors of ``benchmarks/dino_targets.py``; ``--glyphs`` renders
the glyphs set of ``benchmarks/image_sets.py`` (seed 0, its training images) and reads its factors from
the same draws: the background's kind (smooth noise, gradient, stripes), its direction (4 bins, a fifth
for noise), its brightness (4 bins) and the polarity (a light letter on a dark background or not).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import image_sets
import numpy as np
import torch
from dino_targets import factors
from sklearn.metrics import mutual_info_score

from mmssl.encoders.io import load_encoder
from mmssl.evaluation.knn import extract_features
from mmssl.objectives.deepcluster import DeepCluster
from mmssl.run import resolve_config

SEEDS = 3


def glyph_factors(seed: int = 0, per_class: int = 400) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The glyphs set's training images as items {"image": (3, H, W) uint8, "label"} and their factors,
    from each image's own generator draws (``image_sets.glyph`` draws its background first)."""
    images = [im for im in image_sets.glyphs(seed) if im[2] == "train"]
    out: dict[str, list[int]] = {"class": [], "background_kind": [], "background_direction": [],
                                 "background_value": [], "polarity": []}
    for label in range(10):
        for k in range(per_class):
            d = image_sets.background_draws(np.random.default_rng([seed, label, k]))
            value = image_sets.paint_background(d).mean()
            angle = d["angle"] % np.pi if "angle" in d else None  # a gradient's or the stripes' line
            out["class"].append(label)
            out["background_kind"].append(d["kind"])
            out["background_direction"].append(4 if angle is None else min(int(angle / np.pi * 4), 3))
            out["background_value"].append(min(int(value * 4), 3))
            out["polarity"].append(int(value < 0.5))  # the letter is drawn light on a dark background
    if [im[1] for im in images] != out["class"]:
        raise SystemExit("the glyphs set's training images are not in class-major order")
    items = [{"image": torch.from_numpy(im[0]).permute(2, 0, 1).contiguous(), "label": im[1]} for im in images]
    return items, {k: np.array(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoder", help="a saved encoder's directory (a run's DIR/encoder), or 'random'")
    p.add_argument("--glyphs", action="store_true", help="the glyphs set of benchmarks/image_sets.py, rendered here")
    p.add_argument("overrides", nargs="*", help="key=value settings of deepcluster_image (its clustering)")
    args = p.parse_args()
    task, cfg = resolve_config("deepcluster_image", None, {}, ["evaluate=false", *args.overrides])
    objective = task.build_objective(cfg)
    if args.glyphs:  # the same clustering settings, for the glyphs' training images
        images, named = glyph_factors()
        objective = DeepCluster(objective.encoder, num_images=len(images), seed=cfg.seed,
                                **dataclasses.asdict(cfg.objective))
    encoder = task.random_encoder(cfg, objective.encoder) if args.encoder == "random" else load_encoder(args.encoder)
    if args.glyphs:
        features = extract_features(encoder, images, task.eval_view(cfg))[0]
    else:
        features = task.train_features(cfg, encoder)
        source = task.source(cfg, cfg.split)
        labels = np.array([int(source[i]["label"]) for i in range(len(source))])
        if not (labels == np.repeat(np.arange(10), len(labels) // 10)).all():
            raise SystemExit("expected the embedded shapes' training split, class-major")
        named = factors(labels, len(labels) // 10)
    shares: dict[str, list[float]] = {}
    for seed in range(SEEDS):
        objective.seed = seed
        objective.recluster(features, 0)
        ids = objective.assignments.numpy()
        shuffled = np.random.default_rng(seed).permutation(ids)
        for name, f in named.items():
            gain = mutual_info_score(ids, f) - mutual_info_score(shuffled, f)
            shares.setdefault(name, []).append(gain / mutual_info_score(f, f))
    print(json.dumps({"encoder": args.encoder, "set": "glyphs" if args.glyphs else "shapes", "overrides": args.overrides,
                      "share_of_entropy": {k: round(float(np.mean(v)), 3) for k, v in shares.items()}}))


if __name__ == "__main__":
    main()
