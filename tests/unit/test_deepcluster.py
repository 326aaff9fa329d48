"""DeepCluster (arXiv:1807.05520): PCA-whitening, the shared k-means against a plain loop, empty
clusters re-seeded, the cluster-balanced weights and loss against references, the classifier's
reset, the schedule and its state, bad settings."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tiny_encoders import TinyEncoder
from tiny_images import StripeImages
from tiny_tasks import Interrupted, _Crashing

import mmssl.tasks  # noqa: F401
from mmssl.config import ConfigError
from mmssl.data import StepBatchSampler
from mmssl.encoders.io import load_encoder
from mmssl.objectives.deepcluster import HEAD_STD, DeepCluster, nmi, pca_whiten
from mmssl.objectives.kmeans import kmeans, split_empty
from mmssl.registry import TASKS
from mmssl.run import resolve_config, run_training
from mmssl.trainer import latest_checkpoint


def correlated(n=400, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.3, 3, d)
    return torch.randn(n, d, generator=g) @ mix + 5


def test_pca_whitening_gives_identity_covariance_on_the_top_principal_directions():
    x = correlated()
    z = pca_whiten(x, 6)
    assert z.shape == (400, 6)
    torch.testing.assert_close(torch.cov(z.T.double()), torch.eye(6, dtype=torch.double), atol=1e-3, rtol=0)
    # the same subspace and scaling as torch.linalg's SVD of the centred data (signs aside: compare Gram matrices)
    xc = (x - x.mean(0)).double()
    u, _, _ = torch.linalg.svd(xc, full_matrices=False)
    ref = u[:, :6] * (len(x) - 1) ** 0.5  # unit variance along each of the top 6 directions
    torch.testing.assert_close((z @ z.T).double(), ref @ ref.T, atol=2e-3, rtol=1e-3)
    assert pca_whiten(x, 64).shape == (400, 10)  # at most the feature dim


def plain_kmeans(x, centers, iters):
    """Lloyd's algorithm with loops, from a given start; an empty cluster keeps its centre."""
    centers = centers.clone()

    def assign():
        return torch.tensor([min(range(len(centers)), key=lambda j: float(((p - centers[j]) ** 2).sum())) for p in x])

    for _ in range(iters):
        ids = assign()
        for j in range(len(centers)):
            members = [x[i] for i in range(len(x)) if ids[i] == j]
            if members:
                centers[j] = torch.stack(members).mean(0)
    return centers, assign()


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_kmeans_matches_a_plain_loop_and_is_deterministic_from_the_seed(init):
    x = correlated(120, 4)
    centers, ids = kmeans(x, 5, 6, torch.Generator().manual_seed(3), init=init)
    # the plain loop from the same start: the seeding alone (zero iterations) gives it
    start, _ = kmeans(x, 5, 0, torch.Generator().manual_seed(3), init=init)
    if init == "random":
        torch.testing.assert_close(start, x[torch.randperm(120, generator=torch.Generator().manual_seed(3))[:5]])
    ref_centers, ref_ids = plain_kmeans(x, start, 6)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(centers, ref_centers, atol=1e-4, rtol=1e-5)
    again = kmeans(x, 5, 6, torch.Generator().manual_seed(3), init=init)
    assert torch.equal(again[1], ids) and torch.equal(again[0], centers)


def test_empty_clusters_are_reseeded_by_splitting_a_non_empty_one():
    # Duplicated points: random seeding picks equal centres, and nearest-centre ties leave the copies empty.
    x = torch.cat([torch.zeros(10, 3), torch.ones(10, 3)])
    _, plain = kmeans(x, 4, 3, torch.Generator().manual_seed(0), init="random")
    assert (torch.bincount(plain, minlength=4) == 0).any()  # the case the re-seeding is for
    _, ids = kmeans(x, 4, 3, torch.Generator().manual_seed(0), init="random", reseed_empty=True)
    assert (torch.bincount(ids, minlength=4) > 0).all()
    # a single split: the empty cluster takes half of one cluster's points, nobody else moves
    y = correlated(30, 4)
    before = torch.tensor([0] * 20 + [1] * 10)  # cluster 2 empty
    centers = torch.stack([y[:20].mean(0), y[20:].mean(0), torch.zeros(4)])
    after = split_empty(y, before, centers, torch.Generator().manual_seed(1))
    counts = torch.bincount(after, minlength=3)
    assert (counts > 0).all() and counts.sum() == 30
    changed = after != before
    assert (after[changed] == 2).all() and changed.sum() == counts[2]
    assert counts[2] in (5, 10)  # half of cluster 1 (10 points) or of cluster 0 (20 points)
    with pytest.raises(ValueError, match="N >= k"):
        kmeans(torch.zeros(3, 2), 4, 1)


def make(n=40, k=4, **kw):
    torch.manual_seed(0)
    return DeepCluster(TinyEncoder(dim=8), num_images=n, num_clusters=k, pca_dim=8, kmeans_iters=5,
                       cluster_every=kw.pop("cluster_every", 10), **kw).eval()  # eval: no dropout in the way


def features(n=40, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_cluster_weights_make_every_cluster_weigh_the_same():
    obj = make()
    obj.recluster(features(), step=0)
    ids = obj.assignments
    assert (torch.bincount(ids, minlength=4) > 0).all()
    # the weight of each sample, from a loop: N / (K * size of its cluster)
    loop = torch.tensor([40 / (4 * sum(int(j == ids[i]) for j in ids)) for i in range(40)])
    torch.testing.assert_close(obj.class_weight[ids], loop)
    torch.testing.assert_close(loop.mean(), torch.tensor(1.0))  # normalised: a mean weight of one
    per_cluster = torch.zeros(4).index_add_(0, ids, loop)
    torch.testing.assert_close(per_cluster, torch.full((4,), 10.0))  # a uniform draw over clusters


def test_loss_is_the_cluster_weighted_cross_entropy_and_the_paper_samplers_expectation():
    obj = make()
    obj.recluster(features(), step=0)
    x = torch.randn(40, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    index = torch.arange(40)
    out = obj({"input": x, "index": index})
    logits = obj.head(obj.encoder.pool(obj.encoder.forward_features(x)))
    y = obj.assignments
    ref = F.cross_entropy(logits, y, weight=obj.class_weight, reduction="none").mean()
    torch.testing.assert_close(out["loss"], ref)
    # over the whole training set it is the expected loss of drawing a cluster, then an image in it
    ce = F.cross_entropy(logits, y, reduction="none")
    sampler = torch.stack([ce[y == c].mean() for c in range(4)]).mean()
    torch.testing.assert_close(out["loss"], sampler)
    sub = obj({"input": x[:7], "index": index[:7]})  # pseudo-labels follow the batch's indices
    torch.testing.assert_close(sub["loss"], ref.new_tensor(
        sum(float(obj.class_weight[y[i]]) * F.cross_entropy(logits[i:i + 1], y[i:i + 1]).item() for i in range(7)) / 7))
    assert set(out) == {"loss", "acc", "std", "nmi"}


def test_reclustering_resets_the_classifier_deterministically():
    a, b = make(), make()
    a.recluster(features(), step=10)
    with torch.no_grad():
        a.head.weight.add_(1.0)
        a.head.bias.add_(1.0)
    a.recluster(features(), step=20)
    b.recluster(features(), step=20)
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.assignments, b.assignments)
    assert (a.head.bias == 0).all() and abs(float(a.head.weight.detach().std()) - HEAD_STD) < 0.3 * HEAD_STD
    b.recluster(features(), step=30)
    assert not torch.equal(a.head.weight, b.head.weight)  # another step, another draw
    assert 0 <= float(a.nmi_previous) <= 1 and float(nmi(a.assignments, a.assignments)) == pytest.approx(1.0)


def test_schedule_and_state_survive_a_reload():
    obj = make(cluster_every=10)
    assert obj.due(0)
    with pytest.raises(RuntimeError, match="no pseudo-labels"):
        obj({"input": torch.zeros(2, 3, 4, 4), "index": torch.arange(2)})
    obj.recluster(features(), step=0)
    assert [s for s in range(25) if obj.due(s)] == [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]
    obj.recluster(features(seed=1), step=10)
    fresh = make(cluster_every=10)
    fresh.load_state_dict(obj.state_dict())
    assert torch.equal(fresh.assignments, obj.assignments) and torch.equal(fresh.class_weight, obj.class_weight)
    assert torch.equal(fresh.head.weight, obj.head.weight)
    assert not fresh.due(19) and fresh.due(20)
    epochly = make(cluster_every=0, steps_per_epoch=7)
    epochly.recluster(features(), step=0)
    assert not epochly.due(6) and epochly.due(7)


def test_bad_settings_and_inputs_raise_one_clear_error():
    for bad in (["objective.num_clusters=1"], ["objective.pca_dim=0"], ["objective.cluster_every=-1"],
                ["objective.kmeans_iters=0"], ["objective.num_clusters=5000"]):
        task, cfg = resolve_config("deepcluster_image", None, {}, ["batch_size=8", *bad])
        with pytest.raises(ConfigError, match=r"objective \(deepcluster\)"):
            task.build_objective(cfg)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        DeepCluster(TinyEncoder(), num_images=10, num_clusters=2)
    obj = make()
    with pytest.raises(ValueError, match="all 40 training images"):
        obj.recluster(features(39), step=0)
    obj.recluster(features(), step=0)
    with pytest.raises(ValueError, match="'index'"):
        obj({"input": torch.zeros(2, 3, 4, 4)})


class OnStripes(TASKS.get("deepcluster_image")):
    def source(self, cfg, split, labels=False, vocab=None):
        return StripeImages(37, "train", seed=0)


def stripes_run():
    return resolve_config("deepcluster_image", None, {}, ["batch_size=4", "num_workers=0", "image_size=16",
                                                          "encoder.convnet.widths=8,8", "objective.num_clusters=5"])[1]


def test_batches_carry_their_items_global_index():
    task, cfg = OnStripes(), stripes_run()
    batch = task.on_device(cfg, next(iter(task.train_loader(cfg, 3, 1, 0))))
    expected = [i for i, _ in StepBatchSampler(37, 4, 1, 0, cfg.seed).batch(3)]
    assert batch["index"].tolist() == expected and batch["input"].shape[0] == 4


def cluster_once():
    """The task's clustering before step 0 on this process: the assignments and the classifier."""
    task, cfg = OnStripes(), stripes_run()
    torch.manual_seed(0)
    objective = task.build_objective(cfg)
    task.before_step(cfg, objective, 0)
    return objective.assignments.clone(), objective.head.weight.detach().clone()


def _worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.save(cluster_once(), f"{path}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow  # launches two processes
def test_two_processes_cluster_the_gathered_features_as_one_process_does(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path / "two")), nprocs=2, join=True)
    one = cluster_once()
    for rank in range(2):  # 37 images: shards of 19 and 18 (+1 padding)
        ids, head = torch.load(tmp_path / f"two.{rank}")
        assert torch.equal(ids, one[0]) and torch.equal(head, one[1])


class CrashingStripes(OnStripes):
    crash_after = None

    def train_loader(self, cfg, start_batch, world, rank, batch_fn=None):
        return _Crashing(super().train_loader(cfg, start_batch, world, rank, batch_fn), self.crash_after)


def test_a_killed_run_resumes_with_the_same_clusters_to_the_same_weights(tmp_path):
    """Clusterings at steps 0, 5 and 10; killed after the checkpoint of step 4, the resumed run
    loads step 0's pseudo-labels and classifier and re-clusters at 5 and 10 as the straight run did."""
    def run(out, crash_after=None):
        _, cfg = resolve_config("deepcluster_image", None, {"output_dir": str(out), "max_steps": 12},
                                ["batch_size=4", "num_workers=0", "image_size=16", "encoder.convnet.widths=8,8",
                                 "objective.num_clusters=5", "objective.cluster_every=5", "save_every=4",
                                 "monitor_every=0", "evaluate=false", "log_every=1"])
        task = CrashingStripes()
        task.crash_after = crash_after
        run_training(task, cfg)

    run(tmp_path / "straight")
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", crash_after=6)
    assert latest_checkpoint(tmp_path / "resumed").name == "step_0000004"
    run(tmp_path / "resumed")
    straight = load_encoder(tmp_path / "straight").state_dict()
    resumed = load_encoder(tmp_path / "resumed").state_dict()
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-6, msg=k)
