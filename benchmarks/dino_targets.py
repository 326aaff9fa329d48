"""What DINO's teacher sorts the embedded shapes by: train ``dino_image`` for a few steps, then take,
for every training image seen whole, the output its teacher target puts the most weight on, and print
how many outputs those picks spread over and how much of each generating factor of the images they
determine (normalised mutual information, less the same for the picks shuffled: 0 when the picks
ignore a factor, 1 when they name it).

    python benchmarks/dino_targets.py STEPS [key=value ...]

STEPS 0 reads the untrained objective. Factors: the class (the shape), the polarity (background
brighter than the shape or not), the background pattern (5 kinds), the shape's hue (6 bins) and the
background's value (4 bins), all from the generator's own draws (``_draw_params``).
"""
from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from mmssl.modalities.vision.augment import MEAN, STD
from mmssl.modalities.vision.synthetic import _draw_params, generate_shapes
from mmssl.objectives.heads import encode_views
from mmssl.run import resolve_config
from mmssl.trainer import train


def factors(labels: np.ndarray, per_class: int, seed: int = 0, size: int = 32) -> dict[str, np.ndarray]:
    """The class and four nuisances of the generator's training images (class-major, ``per_class`` each)."""
    draws = [_draw_params(seed, j // per_class, j % per_class, size, 30.0) for j in range(len(labels))]
    return {"class": labels,
            "polarity": np.array([int(p["bg"][2] > p["fg"][2]) for p in draws]),
            "pattern": np.array([int(p["pattern"]) for p in draws]),
            "shape_hue": np.array([int(p["fg"][0] * 6) % 6 for p in draws]),
            "background_value": np.array([min(int(p["bg"][2] * 4), 3) for p in draws])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("steps", type=int)
    p.add_argument("overrides", nargs="*", help="key=value settings of dino_image")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        task, cfg = resolve_config("dino_image", None, {}, [f"max_steps={max(args.steps, 1)}", "evaluate=false",
                                                             "monitor_every=0", f"output_dir={tmp}", *args.overrides])
        torch.manual_seed(cfg.seed)
        objective = train(task, cfg)[0] if args.steps else task.build_objective(cfg)
    objective = getattr(objective, "module", objective)
    data = generate_shapes()["train"]
    x = torch.tensor(data["image"]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    # batches of the run's size in a shuffled order, the teacher in training mode, as in training
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    picks = np.empty(len(x), dtype=np.int64)
    objective.train()
    with torch.no_grad():
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            t = objective.teacher_head(encode_views(objective.teacher_encoder, [x[idx]])[0])
            picks[idx.numpy()] = objective.teacher_targets(t).argmax(1).numpy()
    share = np.bincount(picks) / len(picks)
    share = share[share > 0]
    shuffled = np.random.default_rng(0).permutation(picks)
    nmi = {name: round(normalized_mutual_info_score(picks, f) - normalized_mutual_info_score(shuffled, f), 3)
           for name, f in factors(data["label"], len(x) // 10).items()}
    print(json.dumps({"steps": args.steps, "overrides": args.overrides,
                      "outputs_used": round(float(np.exp(-(share * np.log(share)).sum())), 1), "nmi": nmi}))


if __name__ == "__main__":
    main()
