"""deepcluster_image: DeepCluster (arXiv:1807.05520): k-means on the whitened features of the
whole training set gives pseudo-labels, a re-initialised linear classifier learns them from
augmented crops; re-clustered once an epoch."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mmssl.dist import all_gather_nograd, rank, world_size
from mmssl.modalities.vision.augment import ViewSettings, mae_views
from mmssl.objectives.deepcluster import DeepCluster, DeepClusterSettings
from mmssl.registry import TASKS
from mmssl.tasks.image_base import ImageConfig, ImageTask
from mmssl.tasks.sections import ImageEncoders


@dataclasses.dataclass(frozen=True)
class DeepClusterImageConfig(ImageConfig):
    lr: float = 3e-3  # at 1e-3 the re-initialised classifier barely fits its clusters before the next clustering
    objective: DeepClusterSettings = DeepClusterSettings(
        # About 10x the classes, as the paper's 10,000 clusters are for ImageNet's 1,000: the demo's
        # 4,000 images in 10 classes get 100 clusters of about 40 images.
        num_clusters=100,
        # About three epochs of the demo's 62 steps: the paper's epochs are thousands of steps, and a
        # classifier re-initialised every 62 steps had not left chance (loss log K) by the next clustering.
        cluster_every=200,
    )
    # The paper's fixed Sobel filter in front of the network (encoder.sobel): k-means on the features
    # of colour images groups them by colour, so the encoder reads the gradients of the grayscale image.
    encoder: ImageEncoders = dataclasses.replace(ImageConfig.encoder, sobel=True)
    # The paper's crops: a random resized crop and a flip, no colour changes (the filter removes colour;
    # jitter and dropping colour only rescale the gradients). Crops of at least 20% of the image, not the
    # paper's 8%: an 8% crop of a 32 px image is 9 px wide and often holds no part of the shape.
    # Not the paper's: half the crops inverted (solarized at threshold 0), which flips the sign of
    # every gradient behind the filter. Without it k-means groups images by the polarity of their
    # edges (lighter or darker than the background), which the classifier then learns; inverted
    # crops make polarity unpredictable from a crop (docs/results/image.md). solarize_prob=0 restores
    # the paper's views.
    views: tuple[ViewSettings, ...] = (
        dataclasses.replace(mae_views(None, min_scale=0.2)[0], solarize_prob=0.5, solarize_threshold=0.0),)


@TASKS.register("deepcluster_image")
class DeepClusterImage(ImageTask):
    objective = "deepcluster"
    Config = DeepClusterImageConfig

    def build_objective(self, cfg: DeepClusterImageConfig) -> DeepCluster:
        n = len(self.source(cfg, cfg.split))
        # Optimizer steps in one pass over the data, as the trainer's stream counts them.
        steps_per_epoch = max(1, n // (cfg.batch_size * world_size()) // cfg.grad_accum)
        return super().build_objective(cfg, num_images=n, steps_per_epoch=steps_per_epoch, seed=cfg.seed)

    def before_step(self, cfg: DeepClusterImageConfig, objective: DeepCluster, step: int) -> None:
        if objective.due(step):
            objective.recluster(self.train_features(cfg, objective.encoder), step)

    def before_step_period(self, cfg: DeepClusterImageConfig, objective: DeepCluster) -> int:
        return objective.period

    @torch.no_grad()
    def train_features(self, cfg: DeepClusterImageConfig, encoder: nn.Module, batch_size: int = 256) -> torch.Tensor:
        """Pooled features (N, D) of every training image (the evaluation's view: resized, no
        augmentation), in index order, in eval mode. Each process computes a contiguous shard of
        ceil(N / world) images (the last one padded with the last image, so the shards gather),
        then every process receives all N."""
        source = self.source(cfg, cfg.split)
        n, world, me = len(source), world_size(), rank()
        per = -(-n // world)
        rows = [min(i, n - 1) for i in range(me * per, (me + 1) * per)]
        view = self.eval_view(cfg)
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        try:
            feats = []
            for start in range(0, per, batch_size):
                x = torch.stack([view(source[i]["image"]) for i in rows[start:start + batch_size]]).to(device)
                feats.append(encoder.pool(encoder.forward_features(x)).float())  # (b, D)
        finally:
            encoder.train(was_training)
        return all_gather_nograd(torch.cat(feats))[:n]  # (N, D)
