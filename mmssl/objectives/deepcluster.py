"""DeepCluster (Caron, Bojanowski, Joulin & Douze, arXiv:1807.05520).

Two steps alternate. Every ``cluster_every`` optimizer steps (one epoch by default) the pooled
features of every training image, computed in eval mode without augmentation, are PCA-whitened
to ``pca_dim`` dimensions, L2-normalised and clustered by k-means; each image's cluster is its
pseudo-label, and the linear classifier on the encoder is re-initialised (its old classes mean
nothing for the new clusters). Between clusterings the encoder and the classifier learn to
predict the pseudo-labels of augmented crops by cross-entropy.

The paper samples a cluster uniformly and then an image uniformly within it, so that big clusters
do not swallow the others. Here the data stream stays the trainer's uniform one and sample i in
cluster c(i) weighs w_i = N / (K |c(i)|) in the loss: with images drawn uniformly,
E[w_i l_i] = sum_i l_i / (K |c(i)|), which is exactly the expected loss under the paper's sampler.
Weights keep the stream a pure function of the seed (exact resume, any number of processes)
at the price of a noisier gradient from small clusters.

The task supplies the features: from its ``before_step`` hook, when ``due(step)``, it calls
``recluster`` with the features of all N training images in index order, the same on every
process; its batches carry each item's global ``index``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.dist import broadcast
from mmssl.objectives.base import Objective
from mmssl.objectives.heads import embedding_std
from mmssl.objectives.kmeans import kmeans
from mmssl.registry import OBJECTIVES

HEAD_STD = 0.01  # the authors' code draws the re-initialised classifier from N(0, 0.01^2), bias 0


@dataclasses.dataclass(frozen=True)
class DeepClusterSettings:
    """DeepCluster's settings, defaults from the paper (arXiv:1807.05520): K = 10,000 clusters for
    ImageNet, features PCA-whitened to 256 dimensions, k-means with 20 iterations (the authors'
    faiss setting), a new clustering every epoch. ``cluster_every``: optimizer steps between
    clusterings; 0 is one pass over the training set."""

    num_clusters: int = 10000
    pca_dim: int = 256
    kmeans_iters: int = 20
    cluster_every: int = 0


_S = DeepClusterSettings


def pca_whiten(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x (N, D) -> (N, min(dim, D)): centred, projected on the top principal directions and scaled
    to unit variance along each. In float64; directions whose variance is below 1e-5 of the
    largest (dead ReLU units, a rank below D) are damped rather than blown up to unit-variance noise."""
    x = x.double()
    xc = x - x.mean(0)
    cov = xc.T @ xc / max(len(x) - 1, 1)  # (D, D)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0)[:dim].clamp_min(0), evecs.flip(1)[:, :dim]
    return (xc @ evecs / (evals + 1e-5 * evals[0].clamp_min(1e-12)).sqrt()).float()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p[p > 0]
    return -(p * p.log()).sum()


def nmi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised mutual information I(a; b) / sqrt(H(a) H(b)) of two labellings (N,) (the paper's
    measure of how much a clustering changes from one epoch to the next)."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    joint = torch.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).double() / len(a)
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum()
    denom = (_entropy(pa) * _entropy(pb)).sqrt()
    return (mi / denom if denom > 0 else torch.ones((), dtype=torch.double)).float()


@OBJECTIVES.register("deepcluster")
class DeepCluster(Objective):
    Settings: ClassVar[type] = DeepClusterSettings
    single_view = True
    extra_metrics = ("nmi",)

    def __init__(self, encoder: nn.Module, *, num_images: int, steps_per_epoch: int = 0, seed: int = 0,
                 num_clusters: int = _S.num_clusters, pca_dim: int = _S.pca_dim, kmeans_iters: int = _S.kmeans_iters,
                 cluster_every: int = _S.cluster_every):
        """
        Args:
            encoder: exposes ``forward_features``, ``pool`` and ``embed_dim``.
            num_images: N, the training set's size (the task's); pseudo-labels are kept per image.
            steps_per_epoch: optimizer steps in one pass over the training set (the task's);
                the clustering period when ``cluster_every`` is 0.
            seed: the run's seed; clustering at step s draws from a generator seeded by (seed, s).
            num_clusters: K; pca_dim: whitened dimensions kept (at most the feature dim);
            kmeans_iters: Lloyd iterations; cluster_every: see ``DeepClusterSettings``.
        """
        super().__init__()
        if num_clusters < 2 or pca_dim < 1 or kmeans_iters < 1 or cluster_every < 0:
            raise ValueError(f"DeepCluster needs num_clusters >= 2, pca_dim >= 1, kmeans_iters >= 1 and "
                             f"cluster_every >= 0; got {num_clusters}, {pca_dim}, {kmeans_iters}, {cluster_every}")
        if num_images < num_clusters:
            raise ValueError(f"DeepCluster needs at least as many training images as clusters; got {num_images} "
                             f"images for num_clusters={num_clusters}")
        if cluster_every == 0 and steps_per_epoch < 1:
            raise ValueError("cluster_every=0 clusters once an epoch: steps_per_epoch must be >= 1, got "
                             f"{steps_per_epoch}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_clusters)
        self.num_images, self.num_clusters, self.pca_dim, self.kmeans_iters = (num_images, num_clusters, pca_dim,
                                                                                kmeans_iters)
        self.period, self.seed = cluster_every or steps_per_epoch, seed
        # Buffers, so a resumed run has the pseudo-labels, weights and schedule it stopped with.
        self.register_buffer("assignments", torch.zeros(num_images, dtype=torch.long))
        self.register_buffer("class_weight", torch.ones(num_clusters))  # N / (K |c|) per cluster c
        self.register_buffer("last_clustered", torch.full((), -1, dtype=torch.long))  # step of the last clustering
        self.register_buffer("nmi_previous", torch.zeros(()))  # NMI between the last two clusterings
        # Host copy of last_clustered: ``due`` runs every step and must not sync. Refreshed after a load.
        self._host_last: int | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host_last", None))

    def _last(self) -> int:
        if self._host_last is None:  # once per (re)load
            self._host_last = int(self.last_clustered)
        return self._host_last

    def due(self, step: int) -> bool:
        """Whether to re-cluster before optimizer step ``step`` (0-based): never clustered yet, or
        ``period`` steps since the last clustering."""
        last = self._last()
        return last < 0 or step - last >= self.period

    @torch.no_grad()
    def recluster(self, features: torch.Tensor, step: int) -> None:
        """New pseudo-labels from ``features`` (N, D), every training image's pooled features in
        index order (the same on every process); re-initialises the classifier.

        PCA-whitening to ``pca_dim``, L2 normalisation, then k-means from random samples (faiss's
        seeding, as the paper) with empty clusters re-seeded by splitting, so no cluster is empty.
        """
        if features.shape != (self.num_images, self.encoder.embed_dim):
            raise ValueError(f"recluster expects the features of all {self.num_images} training images, "
                             f"({self.num_images}, {self.encoder.embed_dim}); got {tuple(features.shape)}")
        x = F.normalize(pca_whiten(features, self.pca_dim), dim=1)  # (N, min(pca_dim, D))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        _, ids = kmeans(x, self.num_clusters, self.kmeans_iters, gen, init="random", reseed_empty=True)
        # Every process clustered the same features; GPU sums (index_add_) are not bitwise
        # reproducible, so the main process's labels are the ones all keep.
        ids = broadcast(ids.to(self.assignments.device), 0)
        if self._last() >= 0:
            self.nmi_previous.copy_(nmi(self.assignments.cpu(), ids.cpu()))
        counts = torch.bincount(ids, minlength=self.num_clusters).clamp_min(1)
        self.assignments.copy_(ids)
        self.class_weight.copy_(self.num_images / (self.num_clusters * counts.float()))
        self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * HEAD_STD)
        self.head.bias.zero_()
        self.last_clustered.fill_(step)
        self._host_last = step

    def forward(self, batch: dict) -> dict:
        """batch["input"] (B, C, H, W) crops, batch["index"] (B,) their images' global indices.
        Returns loss (cluster-balanced cross-entropy), acc (of the pseudo-label), std and nmi."""
        if "index" not in batch:
            raise ValueError("deepcluster reads each crop's image index: the batch needs 'index' (B,)")
        if self._last() < 0:
            raise RuntimeError("deepcluster has no pseudo-labels yet: call recluster (the task's before_step does) "
                               "before the first step")
        h = self.encoder.pool(self.encoder.forward_features(batch["input"]))  # (B, D)
        logits = self.head(h).float()  # (B, K)
        y = self.assignments[batch["index"]]  # (B,)
        loss = F.cross_entropy(logits, y, weight=self.class_weight, reduction="none").mean()
        acc = (logits.detach().argmax(dim=1) == y).float().mean()
        return {"loss": loss, "acc": acc, "std": embedding_std(h), "nmi": self.nmi_previous.clone()}
