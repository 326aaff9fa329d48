"""The end-of-run report of an image task, and the online monitor's kNN.

Labelled data: kNN + linear probe of the trained encoder beside a random encoder of the same
architecture and raw pixels (``mmssl.evaluation.vision.image_probes``), optional end-to-end
fine-tuning, a t-SNE picture of the test embeddings and the monitor's learning curve. Unlabelled
data: the collapse figures of the pooled features (``mmssl.evaluation.collapse``).

The functions read the task's data through its ``labelled_splits``, ``source``, ``eval_view`` and
``monitor_data`` (tasks/image_base.py), so the report sees what training saw.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from mmssl.evaluation.collapse import rankme
from mmssl.evaluation.knn import check_readout, extract_features, knn_classify, pixels
from mmssl.evaluation.vision import PIXEL_SIZE, RandomSubset, image_probes


def monitor_figures(data: tuple[list, Callable], featurize: Callable, rank: bool = True) -> dict[str, float]:
    """{"knn_top1": kNN top-1 (k = 20), "rankme": RankMe of the test features (only with ``rank``)} of
    ``featurize(source, view) -> (features, labels)`` on the monitor's ``data`` ([train, test] subsets,
    the eval view); unlabelled items (label < 0) are left out. RankMe shows dimensional collapse as it
    happens."""
    (train, test), view = data
    tr_x, tr_y = featurize(train, view)
    te_x, te_y = featurize(test, view)
    tr_x, tr_y, te_x, te_y = tr_x[tr_y >= 0], tr_y[tr_y >= 0], te_x[te_y >= 0], te_y[te_y >= 0]
    out = {"knn_top1": knn_classify(tr_x, tr_y, te_x, te_y, ks=(20,))[20]}
    return {**out, "rankme": rankme(te_x)} if rank else out


def image_report(task: Any, cfg: Any, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
    """The evaluation's JSON-able report (with a ``table`` string); plots go to ``out_dir/plots``."""
    splits = task.labelled_splits(cfg)
    random = task.random_encoder(cfg, encoder)
    if splits is None:  # unlabelled: the collapse monitor only
        return unlabelled_report(task, cfg, {task.name: encoder.eval(), "random": random})
    train, test = splits
    view = task.eval_view(cfg)
    encoders = {task.name: encoder.eval(), "random": random}
    readout = check_readout(cfg.readout)
    if readout != "pooled":  # the pooled features stay in the table, beside the chosen readout
        encoders.update({f"{task.name} pooled": encoder, "random pooled": random})
    report = image_probes(encoders, train, test, view, max_train=cfg.probe_max_train, max_test=cfg.probe_max_test,
                          readouts={task.name: readout, "random": readout}, linear_protocol=cfg.linear_protocol,
                          seed=cfg.seed, random_init_seed=cfg.seed + 1)
    if cfg.finetune_steps > 0:
        report["finetune"] = finetune_report(task, cfg, {task.name: encoder, "random": random}, train, test)
        report["table"] += "\n" + report["finetune"]["line"]
    if out_dir is not None:
        report["plots"] = plot_embeddings(task, cfg, encoder, test, view, Path(out_dir))
        curve = learning_curve(task, cfg, random, Path(out_dir))
        if curve is not None:
            report["learning_curve"] = curve
            report["plots"].append(curve["path"])
    return report


def learning_curve(task: Any, cfg: Any, random: nn.Module, out_dir: Path) -> dict | None:
    """plots/learning_curve.png: the monitor's kNN accuracy over the run, beside the random
    encoder and raw pixels measured once with the same monitor protocol."""
    from mmssl.evaluation.plots import run_learning_curve

    def baselines() -> dict[str, float]:
        data = task.monitor_data(cfg)
        if data is None:
            return {}
        featurize = {"random encoder": lambda src, view: extract_features(random, src, view, readout=cfg.readout),
                     "pixels": lambda src, view: pixels(src, view, size=PIXEL_SIZE)}
        return {name: monitor_figures(data, f, rank=False)["knn_top1"] for name, f in featurize.items()}

    return run_learning_curve(cfg, out_dir, "monitor/knn_top1", baselines,
                              title=f"{task.name}: online kNN (k=20, {cfg.monitor_items} images per split)",
                              ylabel="kNN top-1 accuracy (%)", label=f"{task.name} encoder")


def unlabelled_report(task: Any, cfg: Any, encoders: dict[str, nn.Module]) -> dict[str, Any]:
    """Collapse figures of each encoder's features on a random subset of the training images."""
    from mmssl.evaluation.collapse import collapse_report
    from mmssl.sources import probe_hint

    source = task.source(cfg, cfg.split)
    subset, view = RandomSubset(source, cfg.probe_max_test), task.eval_view(cfg)
    pooled = {name: extract_features(enc, subset, view, readout=cfg.readout)[0] for name, enc in encoders.items()}
    return collapse_report(pooled, "training images", probe_hint(task, cfg, getattr(source, "ds", None)))


def finetune_report(task: Any, cfg: Any, encoders: dict[str, nn.Module], train: Any, test: Any) -> dict:
    """End-to-end fine-tuning (``mmssl.evaluation.vision.finetune``) of each of ``encoders`` with the
    config's recipe (``finetune_*``, MAE's by default) on MAE's training view, the same recipe and seed for each.

    The encoders are the trained one and the same architecture at its random initialisation: a
    fine-tuned accuracy says what pre-training gave only beside training from scratch on the same
    labels and budget (the MAE paper's comparison). Returns {name: accuracy}, "train_loss" ({name: the
    last step's loss}), "recipe" (the settings, in words) and "line" (the table's line)."""
    from mmssl.evaluation.vision import HeldItems, finetune, vit_blocks
    from mmssl.modalities.vision import MAEView
    from mmssl.tasks.image_base import finetune_recipe

    train = HeldItems(train, cfg.in_memory_mib)  # read once for both encoders' epochs, as training holds its set
    classes = getattr(train, "num_classes", None) or int(max(train[i]["label"] for i in range(len(train)))) + 1
    recipe = finetune_recipe(cfg)
    runs = {name: finetune(enc, train, test, MAEView(cfg.image_size), task.eval_view(cfg), classes, recipe,
                           seed=cfg.seed)
            for name, enc in encoders.items()}
    layered = vit_blocks(next(iter(encoders.values()))) is not None
    words = recipe.describe(layered) + f", seed {cfg.seed}" + (
        "" if layered else " (no layer decay or drop path: the encoder is not a ViT)")
    scores = " / ".join(f"{name if name != 'random' else 'from random init'} {100 * r['accuracy']:.1f}%"
                        for name, r in runs.items())
    return {**{name: r["accuracy"] for name, r in runs.items()},
            "train_loss": {name: r["train_loss"] for name, r in runs.items()},
            "recipe": words, "line": f"fine-tuned end to end ({words}): {scores}"}


def plot_embeddings(task: Any, cfg: Any, encoder: nn.Module, test: Any, view: Callable, out_dir: Path) -> list[str]:
    """plots/embedding.png: t-SNE of the features of up to 2000 test images, coloured by class."""
    from mmssl.evaluation.plots import embedding_plot

    feats, labels = extract_features(encoder, RandomSubset(test, 2000), view, readout=cfg.readout)
    names = getattr(test, "vocab", None)
    path = embedding_plot(feats, labels, out_dir / "plots" / "embedding.png", class_names=names,
                          title=f"{task.name}: t-SNE of test embeddings ({cfg.readout} features)")
    return [str(path)]
