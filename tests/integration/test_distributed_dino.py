"""DINO on two processes (gloo) gives what one process gives on the concatenated batch: the loss,
the DDP-averaged gradients and the centre, whose batch mean is all-reduced across processes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_encoders import TinyEncoder

from mmssl.objectives.dino import DINO

GLOBAL_BATCH, K = 8, 12
pytestmark = pytest.mark.slow  # launches two processes


def make(centering="ema"):
    torch.manual_seed(0)  # no BatchNorm in the head (the default) nor in the encoder
    dino = DINO(TinyEncoder(), out_dim=K, hidden_dim=16, bottleneck_dim=8, center_momentum=0.7, centering=centering)
    dino.center.copy_(torch.linspace(-1, 1, K))
    return dino


def views():
    """Global-batch crops: 2 global (8 px) and 2 local (4 px)."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(GLOBAL_BATCH, 3, s, s, generator=g) for s in (8, 8, 4, 4)]


def run(rank=0, world=1, centering="ema"):
    """Loss, gradients and centre after one step on this process's slice of the global batch, in two
    micro-batches (gradient accumulation: the centre moves once, by the mean of both); with Sinkhorn
    centring in one, whose crops the Sinkhorn-Knopp scaling spans on every process."""
    dino = make(centering)
    local = [v.chunk(world)[rank] for v in views()]
    loss, micro = 0, 2 if centering == "ema" else 1
    for part in range(micro):
        out = dino({"views": [v.chunk(micro)[part] for v in local]})
        (out["loss"] / micro).backward()
        loss = loss + out["loss"].detach() / micro
    grads = {n: p.grad.clone() for n, p in dino.named_parameters() if p.requires_grad}
    dino.after_step(1, 10)
    return loss, grads, dino.center.clone()


def _worker(rank, world, port, path, centering):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    loss, grads, center = run(rank, world, centering)
    for g in grads.values():  # what DDP does: average the parameter gradients and (for reporting) the loss
        dist.all_reduce(g)
        g /= world
    dist.all_reduce(loss)
    torch.save((loss / world, grads, center), f"{path}.{rank}")
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_two_processes_match_one(tmp_path, centering):
    path = str(tmp_path / "two")
    mp.spawn(_worker, args=(2, _free_port(), path, centering), nprocs=2, join=True)
    one_loss, one_grads, one_center = run(centering=centering)
    # the step moved the centre, or with Sinkhorn centring left it alone
    assert torch.allclose(one_center, make().center) == (centering == "sinkhorn")
    for rank in range(2):
        loss, grads, center = torch.load(f"{path}.{rank}")
        torch.testing.assert_close(loss, one_loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == one_grads.keys()
        for n, g in one_grads.items():
            torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6, msg=n)
        torch.testing.assert_close(center, one_center, rtol=1e-5, atol=1e-6)
