"""What every image task shares: the config, the backbone, the data stream, the
online kNN monitor and the evaluation (kNN + linear probe beside a random
encoder and raw pixels, and a t-SNE picture of the test embeddings).

A task file only adds its objective's settings, its views and its objective.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.config import TrainConfig
from mmssl.data import HeldOut, train_loader
from mmssl.encoders.io import build_encoder
from mmssl.errors import DataError
from mmssl.evaluation.knn import check_readout
from mmssl.task import Task


@dataclasses.dataclass(frozen=True)
class ImageConfig(TrainConfig):
    # Demo defaults: a small conv net on the 32 px embedded shapes, a few CPU minutes
    # (configs/ holds the ResNet-18 / ViT-B recipes for CIFAR-10 and ImageNet).
    max_steps: int = 800  # 2-4 minutes per task on 2 CPU cores with the conv net
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    image_column: str = "image"
    image_size: int = 32  # crop size fed to the encoder
    backbone: str = "convnet"  # convnet (small, for CPU demos) | vit | resnet18 | resnet50
    convnet_widths: str = "32,64,128,256"
    vit_size: str = "tiny"  # tiny | small | base presets; vit_dim / depth / heads override them
    vit_dim: int | None = 128
    vit_depth: int | None = 4
    vit_heads: int | None = 4
    patch_size: int = 4
    small_stem: bool = True  # ResNet: 3x3 stride-1 stem without max-pool (CIFAR-sized images)
    channels_last: bool | None = None  # ResNet memory format; None: channels-last where CUDA is available
    monitor_every: int = 100  # online kNN accuracy on the labelled evaluation split
    monitor_items: int = 1000  # images per split used by the online monitor
    probe_max_train: int = 10000
    probe_max_test: int = 5000
    finetune_steps: int = 0  # > 0 adds the end-to-end fine-tuning protocol to the evaluation
    # What the kNN / linear probes, the monitor and the t-SNE read: "pooled" (the encoder's pool,
    # which contrastive and rotation objectives train) or "tokens" (the token map, concatenated).
    readout: str = "pooled"


class ImageTask(Task):
    """Base of the image tasks; subclasses set ``views`` and ``build_objective``."""

    modality = "image"
    default_data = "embedded shapes (10 classes, 32 px)"
    Config = ImageConfig

    def encoder_spec(self, cfg: ImageConfig) -> dict:
        if cfg.backbone == "vit":
            kwargs = {"size": cfg.vit_size, "input_size": [cfg.image_size, cfg.image_size],
                      "patch": [cfg.patch_size, cfg.patch_size], "channels": 3,
                      "dim": cfg.vit_dim, "depth": cfg.vit_depth, "heads": cfg.vit_heads}
            return {"name": "vit", "kwargs": kwargs}
        if cfg.backbone == "convnet":
            try:
                widths = [int(w) for w in cfg.convnet_widths.split(",")]
            except ValueError:
                raise DataError(f"convnet_widths must be comma-separated integers, not '{cfg.convnet_widths}'") from None
            return {"name": "convnet", "kwargs": {"widths": widths}}
        if cfg.backbone in ("resnet18", "resnet50"):
            channels_last = torch.cuda.is_available() if cfg.channels_last is None else cfg.channels_last
            return {"name": "resnet", "kwargs": {"arch": cfg.backbone, "small_stem": cfg.small_stem,
                                                 "channels_last": channels_last}}
        raise DataError(f"backbone must be convnet, vit, resnet18 or resnet50, not '{cfg.backbone}'")

    def build_encoder(self, cfg: ImageConfig) -> nn.Module:
        check_readout(cfg.readout)  # a bad readout fails before training, not at the first monitor step
        return build_encoder(self.encoder_spec(cfg))

    def views(self, cfg: ImageConfig) -> Callable[[torch.Tensor, torch.Generator], dict]:
        """item image (uint8 (3, H, W)) + generator -> the batch entry the objective reads."""
        raise NotImplementedError

    # data -------------------------------------------------------------------------------------
    def source(self, cfg: ImageConfig, split: str, labels: bool = False, vocab: list | None = None) -> Any:
        from mmssl.modalities.vision import open_images

        label = cfg.label_column if labels else None
        return open_images(cfg.dataset, split, cfg.dataset_config, cfg.image_column, label, vocab=vocab)

    def train_loader(self, cfg: ImageConfig, start_batch: int, world: int, rank: int) -> Any:
        if cfg.streaming:
            raise DataError("image tasks read map-style datasets; drop --streaming")
        source = self.source(cfg, cfg.split)
        make = self.views(cfg)

        def transform(item: dict, gen: torch.Generator) -> dict:
            return make(item["image"], gen)

        return train_loader(source, transform, cfg.batch_size, world, rank, cfg.seed, start_batch, cfg.num_workers)

    def labelled_splits(self, cfg: ImageConfig) -> tuple[Any, Any] | None:
        """(train, test) with labels, or None when the dataset has none to probe."""
        if cfg.dataset != "demo" and cfg.label_column is None:
            return None
        train = self.source(cfg, cfg.split, labels=True)
        try:
            test = self.source(cfg, cfg.eval_split or "test", labels=True, vocab=getattr(train, "vocab", None))
        except DataError:
            if cfg.eval_split:
                raise
            return HeldOut(train, keep_test=False), HeldOut(train, keep_test=True)
        return train, test

    def eval_view(self, cfg: ImageConfig) -> Callable[[torch.Tensor], torch.Tensor]:
        from mmssl.modalities.vision import EvalView

        return EvalView(cfg.image_size)

    # monitor and evaluation ----------------------------------------------------------------------
    def monitor(self, cfg: ImageConfig, encoder: nn.Module) -> dict[str, float]:
        from mmssl.evaluation.knn import extract_features, knn_classify
        from mmssl.evaluation.vision import RandomSubset

        if not hasattr(self, "_monitor_data"):
            splits = self.labelled_splits(cfg)
            # fixed random subsets: folders list items class by class, so the first N would miss classes
            self._monitor_data = None if splits is None else (
                [RandomSubset(s, cfg.monitor_items) for s in splits], self.eval_view(cfg))
        if self._monitor_data is None:
            return {}
        (train, test), view = self._monitor_data
        tr_x, tr_y = extract_features(encoder, train, view, readout=cfg.readout)
        te_x, te_y = extract_features(encoder, test, view, readout=cfg.readout)
        return {"knn_top1": knn_classify(tr_x, tr_y, te_x, te_y, ks=(20,))[20]}

    def evaluate(self, cfg: ImageConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        from mmssl.evaluation.vision import image_probes

        splits = self.labelled_splits(cfg)
        torch.manual_seed(cfg.seed + 1)
        random = build_encoder(encoder.spec).eval()
        if splits is None:  # unlabelled: the collapse monitor only
            return self.unlabelled_report(cfg, {self.name: encoder.eval(), "random": random})
        train, test = splits
        view = self.eval_view(cfg)
        encoders = {self.name: encoder.eval(), "random": random}
        readout = check_readout(cfg.readout)
        if readout != "pooled":  # the pooled features stay in the table, beside the chosen readout
            encoders.update({f"{self.name} pooled": encoder, "random pooled": random})
        report = image_probes(encoders, train, test, view, max_train=cfg.probe_max_train, max_test=cfg.probe_max_test,
                              readouts={self.name: readout, "random": readout})
        if cfg.finetune_steps > 0:
            report["finetune"] = self.finetune(cfg, encoder, train, test)
            report["table"] += f"\nfine-tuned end to end ({cfg.finetune_steps} steps): {100 * report['finetune']['accuracy']:.1f}%"
        if out_dir is not None:
            report["plots"] = self.plot_embeddings(cfg, encoder, test, view, Path(out_dir))
        return report

    def unlabelled_report(self, cfg: ImageConfig, encoders: dict[str, nn.Module]) -> dict[str, Any]:
        from mmssl.evaluation.collapse import collapse_report
        from mmssl.evaluation.knn import extract_features
        from mmssl.evaluation.vision import RandomSubset
        from mmssl.sources import probe_hint

        source = self.source(cfg, cfg.split)
        subset, view = RandomSubset(source, cfg.probe_max_test), self.eval_view(cfg)
        pooled = {name: extract_features(enc, subset, view, readout=cfg.readout)[0] for name, enc in encoders.items()}
        return collapse_report(pooled, "training images", probe_hint(self, cfg, getattr(source, "ds", None)))

    def finetune(self, cfg: ImageConfig, encoder: nn.Module, train: Any, test: Any) -> dict:
        from mmssl.evaluation.vision import finetune
        from mmssl.modalities.vision import MAEView

        classes = getattr(train, "num_classes", None) or int(max(train[i]["label"] for i in range(len(train)))) + 1
        return finetune(encoder, train, test, MAEView(cfg.image_size), self.eval_view(cfg), classes,
                        steps=cfg.finetune_steps)

    def plot_embeddings(self, cfg: ImageConfig, encoder: nn.Module, test: Any, view: Callable, out_dir: Path) -> list[str]:
        from mmssl.evaluation.knn import extract_features
        from mmssl.evaluation.plots import embedding_plot
        from mmssl.evaluation.vision import RandomSubset

        feats, labels = extract_features(encoder, RandomSubset(test, 2000), view, readout=cfg.readout)
        names = getattr(test, "vocab", None)
        path = embedding_plot(feats, labels, out_dir / "plots" / "embedding.png", class_names=names,
                              title=f"{self.name}: t-SNE of test embeddings ({cfg.readout} features)")
        return [str(path)]
