"""The image tasks' base: the config, the encoder (``encoder_spec``), the data (a labelled or
unlabelled image source, ``make_item`` in the workers, views made by ``on_device`` on whole
batches), the online kNN monitor's data, and which evaluation (mmssl.evaluation.image_report).

A task file only adds its objective's settings, its default views and its objective.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmssl.config import ConfigError, TrainConfig
from mmssl.data import GatheredBatches, train_and_test, train_loader
from mmssl.encoders.resnet import ResNetSettings
from mmssl.encoders.vit import ViTSettings
from mmssl.errors import DataError
from mmssl.evaluation.knn import check_readout
from mmssl.evaluation.linear import check_protocol
from mmssl.evaluation.vision import FinetuneRecipe
from mmssl.modalities.vision.augment import DecodeAndDraw, ViewSettings, check_views, sized_views, working_size
from mmssl.modalities.vision.in_memory import draw_view_seeds, held_mib, hold_images
from mmssl.registry import OBJECTIVES
from mmssl.task import Task
from mmssl.tasks.sections import BACKBONE, DEMO_VIT, VIT_KEYS, ImageEncoders


@dataclasses.dataclass(frozen=True)
class ImageConfig(TrainConfig):
    # Demo defaults: a small conv net on the 32 px embedded shapes, a few CPU minutes
    # (configs/ holds the ResNet-18 / ViT-B recipes for CIFAR-10 and ImageNet).
    max_steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    image_column: str = "image"
    image_size: int = 32  # crop size fed to the encoder
    # encoder.name: convnet (small, for CPU demos) | vit | resnet; each one's settings in its sub-section
    encoder: ImageEncoders = ImageEncoders(
        vit=DEMO_VIT,  # 4 px patches: a 32 px image is 64 tokens
        resnet=ResNetSettings(small_stem=True),  # CIFAR-sized images keep a 4x4 final map
    )
    monitor_every: int = 100  # online kNN accuracy on the labelled evaluation split
    monitor_items: int = 1000  # images per split used by the online monitor
    probe_max_train: int = 10000
    probe_max_test: int = 5000
    # End-to-end fine-tuning in the evaluation (``finetune_steps`` > 0), the trained encoder beside its
    # random init, MAE's recipe (mmssl.evaluation.vision.FinetuneRecipe); each setting can be changed.
    finetune_steps: int = 0
    finetune_lr: float = FinetuneRecipe.lr  # the AdamW rate after the warm-up, for the head and the last layer
    finetune_layer_decay: float = FinetuneRecipe.layer_decay
    finetune_drop_path: float = FinetuneRecipe.drop_path
    finetune_mixup: float = FinetuneRecipe.mixup
    finetune_cutmix: float = FinetuneRecipe.cutmix
    finetune_label_smoothing: float = FinetuneRecipe.label_smoothing
    # What the kNN / linear probes, the monitor and the t-SNE read: "pooled" (the encoder's pool,
    # which contrastive and rotation objectives train) or "tokens" (the token map, concatenated).
    readout: str = "pooled"
    # The views, one entry per group of crops (``views.0.min_scale=0.08``); each task sets its recipe.
    views: tuple[ViewSettings, ...] = (ViewSettings(crops=2),)
    # Side of the square picture the workers resize every image to (so a batch stacks) and crops are
    # cut from; None: the largest crop side (see augment.working_size).
    working_size: int | None = None
    # The linear probe: "lbfgs" (standardised features, L-BFGS logistic regression, its L2 chosen on a
    # held-out part of train), "lbfgs_fixed" (the same at L2 1e-4) or "mae" (MAE's protocol: BatchNorm
    # without affine, then SGD on a linear layer).
    linear_protocol: str = "lbfgs"
    # Hold the training images in memory, decoded once at the working size, when they take at most
    # this many MiB per process (N x 3 x S x S bytes): batches are then gathered by index in the
    # training process, without DataLoader workers. Larger sets (and view_placement=workers) decode
    # every batch in the workers. 0: always the workers. The batches are the same either way. The
    # evaluation's fine-tuning keeps the labelled training items it reads within the same budget.
    in_memory_mib: int = 2048

    renamed: ClassVar[dict[str, str]] = {
        "backbone": BACKBONE, "convnet_widths": "encoder.convnet.widths", **VIT_KEYS, "patch_size": "encoder.vit.patch",
        "vit_cls_token": "encoder.vit.cls_token", "vit_pos_embed": "encoder.vit.pos_embed", "vit_pool": "encoder.vit.pool",
        "small_stem": "encoder.resnet.small_stem", "channels_last": "encoder.resnet.channels_last"}


class ImageTask(Task):
    """Base of the image tasks; subclasses set their Config's ``views`` and ``build_objective``."""

    modality = "image"
    default_data = "embedded shapes (10 classes, 32 px)"
    Config = ImageConfig
    # True: training reads the label column (supervised objectives): items and batches carry "label",
    # and a dataset other than the demo needs --label-column.
    train_labels = False

    def encoder_spec(self, cfg: ImageConfig) -> dict:
        settings = cfg.encoder.chosen(self.name)
        sobel = isinstance(cfg.encoder, ImageEncoders) and cfg.encoder.sobel
        if isinstance(settings, ViTSettings):
            spec = settings.spec([cfg.image_size, cfg.image_size], channels=2 if sobel else 3)
        else:
            spec = settings.spec()
        if not sobel:
            return spec
        from mmssl.modalities.vision.augment import MEAN, STD

        # The filter undoes the views' normalisation before its grayscale (mmssl.encoders.sobel).
        return {"name": "sobel", "kwargs": {"encoder": spec, "mean": list(MEAN), "std": list(STD)}}

    def build_encoder(self, cfg: ImageConfig) -> nn.Module:
        check_readout(cfg.readout)  # a bad readout fails before training, not at the first monitor step
        check_protocol(cfg.linear_protocol)
        return super().build_encoder(cfg)

    def view_settings(self, cfg: ImageConfig) -> tuple[ViewSettings, ...]:
        """cfg.views with every crop size set (``size`` None is the encoder's ``image_size``)."""
        return sized_views(cfg.views, cfg.image_size)

    @property
    def single_view(self) -> bool:
        """Whether the objective reads one crop (batch["input"]) rather than views (batch["views"])."""
        return OBJECTIVES.get(self.objective).single_view

    def check_config(self, cfg: ImageConfig) -> None:
        super().check_config(cfg)
        if self.train_labels and cfg.dataset != "demo" and cfg.label_column is None:
            raise ConfigError(f"{self.name} trains on labels: pass --label-column COLUMN (the demo data's are "
                              f"the shapes' classes)")
        check_views(cfg.views)
        if cfg.in_memory_mib < 0:
            raise ConfigError(f"in_memory_mib must be 0 (never hold the images) or more, got {cfg.in_memory_mib}")
        check_finetune(cfg)
        if cfg.working_size is not None and cfg.working_size < 1:
            raise ConfigError(f"working_size must be a positive number of pixels, got {cfg.working_size}")
        crops = sum(v.crops for v in cfg.views)
        if self.single_view and crops != 1:
            raise ConfigError(f"{self.name} reads one crop per image; its views give {crops}")
        if not self.single_view and crops < 2:
            raise ConfigError(f"{self.name} compares views of an image: its views give {crops} crop(s), need 2 or more")

    def decoder(self, cfg: ImageConfig) -> DecodeAndDraw:
        """What the data path does to each training image: resize to the working size, draw its view seed."""
        views = self.view_settings(cfg)
        return DecodeAndDraw(views, working_size(views, cfg.working_size))

    def make_item(self, cfg: ImageConfig) -> Callable[[dict, torch.Generator], dict]:
        """{"image": uint8 (3, H, W), ...} + generator -> {"image": uint8 (3, S, S) at the working
        size, "view_seed": int64 (), "source_size": int64 (2,)}."""
        make = self.decoder(cfg)
        if self.train_labels:  # plus "label": int, -1 for an unlabelled row
            return lambda item, gen: {**make(item["image"], gen), "label": item["label"]}
        return lambda item, gen: make(item["image"], gen)

    def on_device(self, cfg: ImageConfig, batch: dict) -> dict:
        """{"image": uint8 (B, 3, S, S), "view_seed": (B,), "source_size": (B, 2), "index": (B,)} -> the
        objective's batch: {"views": [V x float32 (B, 3, size, size)]} or {"input": (B, 3, size, size)},
        with "index" passed on. The views' parameters are drawn here, for the whole batch at once."""
        from mmssl.modalities.vision import draw_params, make_views

        settings = self.view_settings(cfg)
        params = draw_params(settings, batch["source_size"], batch["view_seed"])
        views = make_views(batch["image"], params, settings)
        out = {"input": views[0]} if self.single_view else {"views": views}
        if "index" in batch:  # (B,) int64, the samples' global indices (mmssl.data.SeededItems)
            out["index"] = batch["index"]
        return {**out, "label": batch["label"]} if self.train_labels else out  # label: (B,) int64

    # data -------------------------------------------------------------------------------------
    def source(self, cfg: ImageConfig, split: str, labels: bool = False, vocab: list | None = None) -> Any:
        from mmssl.modalities.vision import open_images

        label = cfg.label_column if labels else None
        return open_images(cfg.dataset, split, cfg.dataset_config, cfg.image_column, label, vocab=vocab)

    def train_loader(self, cfg: ImageConfig, start_batch: int, world: int, rank: int,
                     batch_fn: Callable[[dict], dict] | None = None) -> Any:
        """This process's batches from ``start_batch`` on: gathered from the training set held in
        memory when it fits in ``cfg.in_memory_mib`` (and the views are made on the device), else
        decoded item by item in ``cfg.num_workers`` DataLoader workers. The two give the same batches."""
        if cfg.streaming:
            raise DataError("image tasks read map-style datasets; drop --streaming")
        source = self.source(cfg, cfg.split, labels=self.train_labels)
        decode = self.decoder(cfg)
        mib = held_mib(len(source), decode.size)
        if batch_fn is None and mib <= cfg.in_memory_mib:
            if rank == 0:
                print(f"{self.name}: holding the {len(source)} training images in memory at {decode.size} px "
                      f"({mib:.0f} MiB of in_memory_mib={cfg.in_memory_mib})")
            held = hold_images(source, decode, self.train_labels, cfg.num_workers)
            return GatheredBatches(held, draw_view_seeds, cfg.batch_size, world, rank, cfg.seed, start_batch)
        return train_loader(source, self.make_item(cfg), cfg.batch_size, world, rank, cfg.seed,
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
        from mmssl.evaluation.image_report import monitor_figures
        from mmssl.evaluation.knn import extract_features

        data = self.monitor_data(cfg)
        if data is None:
            return {}
        return monitor_figures(data, lambda src, view: extract_features(encoder, src, view, readout=cfg.readout))

    def evaluate(self, cfg: ImageConfig, encoder: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        from mmssl.evaluation.image_report import image_report

        return image_report(self, cfg, encoder, out_dir)

    def plot_test_reconstructions(self, cfg: ImageConfig, objective: Any, out_dir: Path, title: str) -> None:
        """DIR/plots/reconstruction.png: original / masked / painted images of the test split (or the
        training split of an unlabelled dataset), as the objective's ``reconstruct`` draws them."""
        from mmssl.evaluation.plots import plot_reconstructions
        from mmssl.modalities.vision import denormalize

        splits = self.labelled_splits(cfg) if cfg.dataset == "demo" or cfg.label_column else None
        source = splits[1] if splits else self.source(cfg, cfg.split)
        view = self.eval_view(cfg)
        # evenly spaced items: datasets often list their images class by class
        picks = torch.linspace(0, len(source) - 1, min(8, len(source))).long().tolist()
        x = torch.stack([view(source[i]["image"]) for i in picks])
        plot_reconstructions(objective, x, cfg.seed, out_dir / "plots" / "reconstruction.png",
                             denormalize=denormalize, title=title)


def check_finetune(cfg: ImageConfig) -> None:
    """One ``ConfigError`` for the first bad ``finetune_*`` setting."""
    if cfg.finetune_steps < 0:
        raise ConfigError(f"finetune_steps must be 0 (no fine-tuning) or more, got {cfg.finetune_steps}")
    for field, why in dataclasses.replace(finetune_recipe(cfg), steps=1).problems():
        raise ConfigError(f"finetune_{field} {why}, got {getattr(cfg, 'finetune_' + field)}")


def finetune_recipe(cfg: ImageConfig) -> FinetuneRecipe:
    """The fine-tuning's recipe from the config's ``finetune_*`` keys."""
    return FinetuneRecipe(steps=cfg.finetune_steps, lr=cfg.finetune_lr, layer_decay=cfg.finetune_layer_decay,
                          drop_path=cfg.finetune_drop_path, mixup=cfg.finetune_mixup, cutmix=cfg.finetune_cutmix,
                          label_smoothing=cfg.finetune_label_smoothing)
