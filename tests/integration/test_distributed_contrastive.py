"""Two processes (gloo) give what one process gives on the same global batch:
the loss and (DDP-averaged) gradients of SimCLR, SwAV, Barlow Twins (cross-correlation and
standardisation all-reduced), VICReg (variance and covariance over the gathered batch) and
SupCon (positives by label across processes), MoCo's queue, DenseCL's global and dense queues,
and instance discrimination's memory bank (negatives drawn on process 0, or the whole bank, every
process's features written at their indices).

BatchNorm statistics are per process on CPU (SyncBatchNorm has no CPU kernel),
so the projectors here are built without BatchNorm; the encoder has none. The
exception is MoCo's (and DenseCL's) shuffle-BN, whose point is per-group statistics: two
processes with one group each match one process with two groups."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_encoders import BNEncoder, TinyEncoder

from mmssl.objectives.barlow_twins import BarlowTwins
from mmssl.objectives.densecl import DenseCL
from mmssl.objectives.exemplar import Exemplar
from mmssl.objectives.heads import mlp
from mmssl.objectives.moco import MoCo
from mmssl.objectives.simclr import SimCLR
from mmssl.objectives.supcon import SupCon
from mmssl.objectives.swav import SwAV
from mmssl.objectives.vicreg import VICReg

GLOBAL_BATCH = 8




NAMES = ("simclr", "swav", "moco", "moco_shuffle_bn", "densecl", "densecl_shuffle_bn", "barlow_twins", "vicreg",
         "supcon", "exemplar", "exemplar_whole_bank")
LABELS = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])  # positives on the same and on the other process
INDEX = torch.tensor([7, 2, 11, 0, 5, 9, 3, 14])  # the images' indices in a bank of 16


def make(name):
    torch.manual_seed(0)
    if name == "simclr":
        return SimCLR(TinyEncoder(), proj_hidden=32, proj_dim=16, temperature=0.5, projector_bn=False)
    if name == "swav":
        return SwAV(TinyEncoder(), proj_hidden=32, proj_dim=16, num_prototypes=6, projector_bn=False)
    if name in ("barlow_twins", "vicreg"):
        objective = (BarlowTwins if name == "barlow_twins" else VICReg)(TinyEncoder(), proj_hidden=32, proj_dim=16)
        objective.projector = mlp(objective.encoder.embed_dim, 32, 16, layers=3, batch_norm=False)
        return objective
    if name == "exemplar":
        return Exemplar(TinyEncoder(), num_images=16, dim=16, num_negatives=10)
    if name == "exemplar_whole_bank":  # no draws: the exact softmax over every entry
        return Exemplar(TinyEncoder(), num_images=16, dim=16, num_negatives=0)
    if name == "supcon":
        return SupCon(TinyEncoder(), proj_hidden=32, proj_dim=16, temperature=0.5)
    if name == "moco_shuffle_bn":  # groups of 4: one per process on two, two on one process
        return MoCo(BNEncoder(), proj_hidden=32, proj_dim=16, queue_size=3 * GLOBAL_BATCH, symmetric=True,
                    shuffle_bn=GLOBAL_BATCH // 2)
    if name == "densecl":
        return DenseCL(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=3 * GLOBAL_BATCH,
                       dense_queue_size=3 * GLOBAL_BATCH, shuffle_bn=0)
    if name == "densecl_shuffle_bn":  # the key tokens of the shuffled groups travel back to their images
        return DenseCL(BNEncoder(), proj_hidden=32, proj_dim=16, queue_size=3 * GLOBAL_BATCH,
                       dense_queue_size=3 * GLOBAL_BATCH, symmetric=True, shuffle_bn=GLOBAL_BATCH // 2)
    return MoCo(TinyEncoder(), proj_hidden=32, proj_dim=16, queue_size=3 * GLOBAL_BATCH, shuffle_bn=0)


def views(name):
    """Global-batch views; SwAV also gets two smaller local crops."""
    g = torch.Generator().manual_seed(1)
    sizes = [8, 8, 4, 4] if name == "swav" else [8, 8]
    return [torch.randn(GLOBAL_BATCH, 3, s, s, generator=g) for s in sizes]


def run(name, rank=0, world=1):
    """Loss, gradients and (MoCo) queue after one step on this process's slice of the global batch."""
    objective = make(name)
    # Processes' random streams differ; shuffle-BN's permutation is process 0's, broadcast.
    torch.manual_seed(100 + rank)
    local = [v.chunk(world)[rank] for v in views(name)]
    if name.startswith("exemplar"):
        out = objective({"input": local[0], "index": INDEX.chunk(world)[rank]})
    else:
        out = objective({"views": local, "label": LABELS.chunk(world)[rank]})
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.requires_grad}
    queue = None
    if name.startswith(("moco", "densecl")):
        objective.after_step(1, 10)
        queue = (objective.queue.clone(), int(objective.queue_ptr))
        if name.startswith("densecl"):
            queue += (objective.dense_queue.clone(), int(objective.dense_queue_ptr))
    if name.startswith("exemplar"):
        objective.after_step(1, 10)
        queue = objective.bank.clone()
    return out["loss"].detach(), grads, queue


def _worker(rank, world, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for name in NAMES:
        loss, grads, queue = run(name, rank, world)
        # What DDP does: average the parameter gradients and (for reporting) the loss.
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss)
        results[name] = (loss / world, grads, queue)
    torch.save(results, f"{path}.{rank}")
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    path = str(tmp_path / "two")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    ranks = [torch.load(f"{path}.{r}") for r in range(2)]
    for name in NAMES:
        one_loss, one_grads, one_queue = run(name)
        for two_loss, two_grads, two_queue in (r[name] for r in ranks):
            torch.testing.assert_close(two_loss, one_loss, rtol=1e-5, atol=1e-6, msg=name)
            assert two_grads.keys() == one_grads.keys()
            # rounding scales with the largest gradient: Barlow Twins' reach ~100, and the projector's
            # last bias, which the standardisation cancels, gets rounding alone
            atol = 1e-6 * max(1.0, *(g.abs().max().item() for g in one_grads.values()))
            for n, g in one_grads.items():
                torch.testing.assert_close(two_grads[n], g, rtol=1e-4, atol=atol, msg=f"{name} {n}")
        if name.startswith(("moco", "densecl")):
            # every process's queues hold the keys of both processes, in global-batch order
            size = GLOBAL_BATCH * (2 if name.endswith("shuffle_bn") else 1)  # symmetric: both views' keys
            for two_queue in (r[name][2] for r in ranks):
                assert two_queue[1::2] == one_queue[1::2] == (size,) * len(one_queue[1::2])
                for two, one in zip(two_queue[::2], one_queue[::2]):
                    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)
        if name.startswith("exemplar"):  # every process's bank holds both processes' features
            for two_bank in (r[name][2] for r in ranks):
                torch.testing.assert_close(two_bank, one_queue, rtol=1e-5, atol=1e-6)
            assert not torch.equal(one_queue, make(name).bank)
