"""The image learning tests' run: a shipped image task reading small labelled images for every split,
trained for a few hundred steps of a small conv net, then scored by kNN (k = 20, the image report's
protocol and columns without its linear probe and plots) beside its random encoder and raw pixels."""
from __future__ import annotations

from pathlib import Path

import mmssl.tasks  # noqa: F401
from mmssl.encoders.io import load_encoder
from mmssl.evaluation.vision import image_probes
from mmssl.registry import TASKS
from mmssl.run import resolve_config, run_training

# Run settings every learning test shares; image size, steps and method settings are each test's.
SMALL_RUN = ["num_workers=0", "monitor_every=0", "log_every=50", "save_every=1000", "evaluate=false",
             "encoder.convnet.widths=16,32,64", "batch_size=64", "eval_split=test"]


def reading(name: str, train, test):
    """The shipped task ``name`` reading the labelled sources ``train`` and ``test`` for every split."""

    class Reading(TASKS.get(name)):
        def source(self, cfg, split, labels=False, vocab=None):
            return train if split == "train" else test

    return Reading()


def scores_after_training(task, out: Path, steps: int, overrides: list[str], linear: bool = False):
    """Trains ``task`` for ``steps`` (SMALL_RUN, then ``overrides``); returns the saved encoder, the kNN top-1
    accuracy (k = 20) of the columns "trained", "random" (the task's random encoder) and "pixels", and with
    ``linear`` the linear probe's accuracy of the same columns (else None)."""
    _, cfg = resolve_config(task.name, None, {"output_dir": str(out), "max_steps": steps}, [*SMALL_RUN, *overrides])
    run_training(task, cfg)
    encoder = load_encoder(out).eval()
    train, test = task.labelled_splits(cfg)
    report = image_probes({"trained": encoder, "random": task.random_encoder(cfg, encoder)}, train, test,
                          task.eval_view(cfg), ks=(20,), linear=linear, seed=cfg.seed, random_init_seed=cfg.seed + 1)
    knn = {column: by_k[20] for column, by_k in report["knn"].items()}
    print(task.name, steps, overrides, "knn", knn, "linear", report.get("linear"))
    return encoder, knn, report.get("linear")


def knn_after_training(task, out: Path, steps: int, overrides: list[str]):
    """``scores_after_training`` without the linear probe: the encoder and the kNN accuracies."""
    encoder, knn, _ = scores_after_training(task, out, steps, overrides)
    return encoder, knn


def assert_beats_random_and_pixels(scores: dict, random_by: float = 0.08, pixels_by: float = 0.03) -> None:
    assert scores["trained"] > scores["random"] + random_by, scores
    assert scores["trained"] > scores["pixels"] + pixels_by, scores
