"""What DeepCluster's k-means groups the embedded shapes by: the training images' features from a saved
encoder (or the task's random encoder) go through the objective's own clustering (PCA-whitening, L2
normalisation, k-means), and for the class and four generator nuisances the script prints the share of
the factor's entropy the clusters determine, (I(clusters; factor) - the same for shuffled clusters) /
H(factor), averaged over three k-means seeds.

    python benchmarks/deepcluster_clusters.py ENCODER_DIR|random [key=value ...]

The factors are those of ``benchmarks/dino_targets.py`` (the generator's own draws).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from dino_targets import factors
from sklearn.metrics import mutual_info_score

from mmssl.encoders.io import load_encoder
from mmssl.run import resolve_config

SEEDS = 3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("encoder", help="a saved encoder's directory (a run's DIR/encoder), or 'random'")
    p.add_argument("overrides", nargs="*", help="key=value settings of deepcluster_image (its clustering)")
    args = p.parse_args()
    task, cfg = resolve_config("deepcluster_image", None, {}, ["evaluate=false", *args.overrides])
    objective = task.build_objective(cfg)
    encoder = task.random_encoder(cfg, objective.encoder) if args.encoder == "random" else load_encoder(args.encoder)
    features = task.train_features(cfg, encoder)
    source = task.source(cfg, cfg.split)
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    per_class = len(labels) // 10
    if not (labels == np.repeat(np.arange(10), per_class)).all():
        raise SystemExit("expected the embedded shapes' training split, class-major")
    shares: dict[str, list[float]] = {}
    for seed in range(SEEDS):
        objective.seed = seed
        objective.recluster(features, 0)
        ids = objective.assignments.numpy()
        shuffled = np.random.default_rng(seed).permutation(ids)
        for name, f in factors(labels, per_class).items():
            gain = mutual_info_score(ids, f) - mutual_info_score(shuffled, f)
            shares.setdefault(name, []).append(gain / mutual_info_score(f, f))
    print(json.dumps({"encoder": args.encoder, "overrides": args.overrides,
                      "share_of_entropy": {k: round(float(np.mean(v)), 3) for k, v in shares.items()}}))


if __name__ == "__main__":
    main()
