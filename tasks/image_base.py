"""The image tasks' base: the config, the backbone (``encoder_spec``), the data (a labelled or
unlabelled image source, ``make_item`` in the workers, views made by ``on_device`` on whole
batches), the online kNN monitor's data, and which evaluation (mmssl.evaluation.image_report).

A task file only adds its objective's settings, its default views and its objective.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmssl.config import ConfigError, TrainConfig
from mmssl.data import train_and_test, train_loader
from mmssl.errors import DataError
from mmssl.evaluation.knn import check_readout
from mmssl.evaluation.linear import check_protocol
from mmssl.modalities.vision.augment import DecodeAndDraw, ViewSettings, check_views, sized_views, working_size
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
    # ViT layout options a checkpoint given to --init may need (timm / transformers ViTs: a class token
    # and learned positions): vit_pos_embed sincos | learned; vit_pool mean | cls (with vit_cls_token)
    vit_cls_token: bool = False
    vit_pos_embed: str = "sincos"
    vit_pool: str = "mean"
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
    # The views, one entry per group of crops (``views.0.min_scale=0.08``); each task sets its recipe.
    views: tuple[ViewSettings, ...] = (ViewSettings(crops=2),)
    # Side of the square picture the workers resize every image to (so a batch stacks) and crops are
    # cut from; None: the largest crop side (see augment.working_size).
    working_size: int | None = None
    # The linear probe: "lbfgs" (standardised features, L-BFGS logistic regression) or "mae"
    # (MAE's protocol: BatchNorm without affine, then SGD on a linear layer).
    linear_protocol: str = "lbfgs"


class ImageTask(Task):
    """Base of the image tasks; subclasses set their Config's ``views`` and ``build_objective``."""

    modality = "image"
    default_data = "embedded shapes (10 classes, 32 px)"
    Config = ImageConfig
    single_view = False  # True: the objective reads batch["input"] (one crop), else batch["views"]

    def encoder_spec(self, cfg: ImageConfig) -> dict:
        if cfg.backbone == "vit":
            if cfg.vit_pos_embed not in ("sincos", "learned") or cfg.vit_pool not in ("mean", "cls") or (
                    cfg.vit_pool == "cls" and not cfg.vit_cls_token):
                raise DataError(f"vit_pos_embed must be sincos or learned, vit_pool mean or cls (with vit_cls_token="
                                f"true), not '{cfg.vit_pos_embed}', '{cfg.vit_pool}'")
            kwargs = {"size": cfg.vit_size, "input_size": [cfg.image_size, cfg.image_size],
                      "patch": [cfg.patch_size, cfg.patch_size], "channels": 3,
                      "dim": cfg.vit_dim, "depth": cfg.vit_depth, "heads": cfg.vit_heads,
                      "cls_token": cfg.vit_cls_token, "pos_embed": cfg.vit_pos_embed, "pool": cfg.vit_pool}
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
        check_protocol(cfg.linear_protocol)
        return super().build_encoder(cfg)

    def view_settings(self, cfg: ImageConfig) -> tuple[ViewSettings, ...]:
        """cfg.views with every crop size set (``size`` None is the encoder's ``image_size``)."""
        return sized_views(cfg.views, cfg.image_size)

    def check_config(self, cfg: ImageConfig) -> None:
        check_views(cfg.views)
        if cfg.working_size is not None and cfg.working_size < 1:
            raise ConfigError(f"working_size must be a positive number of pixels, got {cfg.working_size}")
        crops = sum(v.crops for v in cfg.views)
        if self.single_view and crops != 1:
            raise ConfigError(f"{self.name} reads one crop per image; its views give {crops}")
        if not self.single_view and crops < 2:
            raise ConfigError(f"{self.name} compares views of an image: its views give {crops} crop(s), need 2 or more")

    def make_item(self, cfg: ImageConfig) -> Callable[[dict, torch.Generator], dict]:
        """{"image": uint8 (3, H, W), ...} + generator -> {"image": uint8 (3, S, S) at the working
        size, "view_params": (V, NUM_PARAMS)}."""
        views = self.view_settings(cfg)
        make = DecodeAndDraw(views, working_size(views, cfg.working_size))
        return lambda item, gen: make(item["image"], gen)

    def on_device(self, cfg: ImageConfig, batch: dict) -> dict:
        """{"image": uint8 (B, 3, S, S), "view_params": (B, V, NUM_PARAMS)} -> the objective's batch:
        {"views": [V x float32 (B, 3, size, size)]} or {"input": (B, 3, size, size)}."""
        from mmssl.modalities.vision import make_views

        views = make_views(batch["image"], batch["view_params"], self.view_settings(cfg))
        return {"input": views[0]} if self.single_view else {"views": views}

    # data -------------------------------------------------------------------------------------
    def source(self, cfg: ImageConfig, split: str, labels: bool = False, vocab: list | None = None) -> Any:
        from mmssl.modalities.vision import open_images

        label = cfg.label_column if labels else None
        return open_images(cfg.dataset, split, cfg.dataset_config, cfg.image_column, label, vocab=vocab)

    def train_loader(self, cfg: ImageConfig, start_batch: int, world: int, rank: int,
                     batch_fn: Callable[[dict], dict] | None = None) -> Any:
        if cfg.streaming:
            raise DataError("image tasks read map-style datasets; drop --streaming")
        return train_loader(self.source(cfg, cfg.split), self.make_item(cfg), cfg.batch_size, world, rank, cfg.seed,
                            start_batch, cfg.num_workers, batch_fn=batch_fn)

    def labelled_splits(self, cfg: ImageConfig) -> tuple[Any, Any] | None:
        """(train, test) with labels, or None when the dataset has none to probe."""
        if cfg.dataset != "demo" and cfg.label_column is None:
            return None
        return train_and_test(lambda split, vocab: self.source(cfg, split, labels=True, vocab=vocab),
                              cfg.split, cfg.eval_split)

    def eval_view(self, cfg: ImageConfig) -> Callable[[torch.Tensor], torch.Tensor]:
        from mmssl.modalities.vision import EvalView

        return EvalView(cfg.image_size)

    # monitor and evaluation ----------------------------------------------------------------------
    def monitor_data(self, cfg: ImageConfig) -> tuple[list, Callable] | None:
        """([train, test] fixed random subsets of monitor_items, the eval view), or None without labels."""
        from mmssl.evaluation.vision import RandomSubset

        if not hasattr(self, "_monitor_data"):
            splits = self.labelled_splits(cfg)
            # fixed random subsets: folders list items class by class, so the first N would miss classes
            self._monitor_data = None if splits is None else (
                [RandomSubset(s, cfg.monitor_items) for s in splits], self.eval_view(cfg))
        return self._monitor_data

    def monitor(self, cfg: ImageConfig, encoder: nn.Module) -> dict[str, float]:
        from mmssl.evaluation.image_report import monitor_knn
        from mmssl.evaluation.knn import extract_features

        data = self.monitor_data(cfg)
        if data is None:
            return {}
        return {"knn_top1": monitor_knn(data, lambda src, view: extract_features(encoder, src, view,
                                                                                  readout=cfg.readout))}

    def evaluate(self, cfg: ImageConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        from mmssl.evaluation.image_report import image_report

        return image_report(self, cfg, encoder, out_dir)
