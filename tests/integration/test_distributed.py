"""Two processes (gloo) give the loss and gradients of one process on the same global batch: CPC on
audio, and dense predictive coding on video (cpc_video, its negatives by batch, cell and clip, and its
jittered windows)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmssl import dist as mdist
from mmssl.encoders.context import CPCEncoderSettings
from mmssl.encoders.io import build_encoder
from mmssl.encoders.maps import FeatureMapEncoder
from mmssl.objectives.cpc import CPC
from mmssl.objectives.cpc_video import CPCVideo
from mmssl.tasks.cpc_audio import CPCAudio, CPCAudioConfig
from mmssl.tasks.sections import AudioEncoders

GLOBAL_BATCH = 4


def make_objective(negatives_from="batch"):
    torch.manual_seed(0)
    cfg = CPCAudioConfig(encoder=AudioEncoders(cpc=CPCEncoderSettings(channels=16, context_dim=16)))
    return CPC(build_encoder(CPCAudio().encoder_spec(cfg)), steps=3, num_negatives=8, negatives_from=negatives_from)


def make_batch():
    return torch.randn(GLOBAL_BATCH, 3200, generator=torch.Generator().manual_seed(1))


def loss_and_grads(objective, wav):
    torch.manual_seed(123)  # the negatives are drawn from this (process-synchronised) RNG
    out = objective({"input": wav})
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in objective.named_parameters()}
    return out["loss"].detach(), grads


class StrideFour(FeatureMapEncoder):
    """Frames -> a stride-4 map, without BatchNorm (whose statistics are per process on CPU)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=2, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 6, 4, stride=2, padding=1))
        self.embed_dim = 6

    def feature_map(self, x):
        return self.net(x)


VIDEO = {"video_batch": {}, "video_cell": {"negatives_from": "cell"}, "video_clip": {"negatives_from": "clip"},
         "video_jitter_conv_gru": {"jitter": 1, "context": "conv_gru"}}


def make_video_objective(name):
    torch.manual_seed(0)
    return CPCVideo(StrideFour(), steps=2, num_negatives=8, temperature=0.1, **VIDEO[name])


def video_loss_and_grads(name, rank=0, world=1):
    clips = torch.randn(GLOBAL_BATCH, 5, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # 4 x 4 maps
    objective = make_video_objective(name)
    torch.manual_seed(123)  # the negatives and the windows are drawn from this (process-synchronised) RNG
    out = objective({"frames": clips.chunk(world)[rank]})
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in objective.named_parameters()}


def _worker(rank, world, port, path, negatives_from):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    if negatives_from in VIDEO:
        loss, grads = video_loss_and_grads(negatives_from, rank, world)
    else:
        loss, grads = loss_and_grads(make_objective(negatives_from), make_batch().chunk(world)[rank])
    # What DDP does: average the parameter gradients and (for reporting) the loss.
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": grads}, path)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(tmp_path, negatives_from):
    path = tmp_path / f"two_{negatives_from}.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(path), negatives_from), nprocs=2, join=True)
    return torch.load(path)


@pytest.mark.slow
def test_cpc_two_processes_match_one(tmp_path):
    for negatives_from in ("batch", "sequence", "others"):
        one_loss, one_grads = loss_and_grads(make_objective(negatives_from), make_batch())
        two = run_two(tmp_path, negatives_from)
        torch.testing.assert_close(two["loss"], one_loss, rtol=1e-5, atol=1e-6)
        assert one_grads.keys() == two["grads"].keys()
        for name, g in one_grads.items():
            torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VIDEO))
def test_dense_cpc_video_two_processes_match_one(tmp_path, name):
    one_loss, one_grads = video_loss_and_grads(name)
    two = run_two(tmp_path, name)
    torch.testing.assert_close(two["loss"], one_loss, rtol=1e-5, atol=1e-6)
    assert one_grads.keys() == two["grads"].keys()
    for param, g in one_grads.items():
        torch.testing.assert_close(two["grads"][param], g, rtol=1e-4, atol=1e-6, msg=param)


def test_cpc_negative_sampling_modes():
    """Which sequence each position's negatives come from, per mode (pool rows are sequence-major)."""
    objective = make_objective()
    batch, length, usable = 4, 10, 7
    own = torch.arange(batch).repeat_interleave(usable)[:, None]  # (batch * usable, 1)
    for mode, check in (("sequence", lambda seq: (seq == own).all()), ("others", lambda seq: (seq != own).all()),
                        ("batch", lambda seq: (seq == own).any() and (seq != own).any())):
        objective.negatives_from = mode
        torch.manual_seed(0)
        idx = objective.sample_negatives(batch, length, usable, torch.device("cpu"))
        assert idx.shape == (batch * usable, 8) and idx.min() >= 0 and idx.max() < batch * length
        assert check(idx // length), mode
    # "others" still reaches every other sequence, including the last frame of the last one.
    objective.negatives_from, objective.num_negatives = "others", 4000
    idx = objective.sample_negatives(batch, length, usable, torch.device("cpu"))
    assert set(idx[0].tolist()) == set(range(length, batch * length))
    with pytest.raises(ValueError, match="two sequences"):
        objective.sample_negatives(1, length, usable, torch.device("cpu"))


def test_all_gather_without_process_group_is_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert mdist.all_gather(x) is x
    assert mdist.world_size() == 1 and mdist.rank() == 0
