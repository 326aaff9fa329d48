"""One-pass grouped BatchNorm (shuffle-BN's groups) against the encoder run once per group."""
from __future__ import annotations

import copy

import pytest
import torch
from tiny_encoders import BNEncoder
from torch import nn

from mmssl.encoders.convnet import ConvNet
from mmssl.objectives.batchnorm_groups import batchnorm_groups, groupable
from mmssl.objectives.moco import MoCo, group_sizes
from mmssl.objectives.simclr import SimCLR
from mmssl.trainer import distributed_batchnorm


def per_group(module: nn.Module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The reference: the module run on each group alone, outputs concatenated."""
    return torch.cat([module(part) for part in x.split(sizes)])


def check_against_loop(module: nn.Module, x: torch.Tensor, sizes: list[int], rows_per_sample: int = 1) -> None:
    module.zero_grad(set_to_none=True)
    reference = copy.deepcopy(module)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with batchnorm_groups(module, sizes):
        out = module(xa)
    expected = per_group(reference, xb, [s * rows_per_sample for s in sizes])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(module.named_parameters(), reference.parameters()):
        # sums over a whole batch against sums of per-group sums: equal up to rounding
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6 * float(q.grad.abs().max()), msg=name)
    for (name, b), c in zip(module.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_batchnorm2d_groups_match_one_pass_per_group(momentum, affine, track):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, momentum=momentum, affine=affine, track_running_stats=track)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    if track:  # a second call continues the running statistics, the cumulative count included
        check_against_loop(bn, torch.randn(12, 5, 4, 3) * 2 + 1, [3, 5, 4])
    check_against_loop(bn, torch.randn(12, 5, 4, 3) * 2 + 1, [3, 5, 4])


@pytest.mark.parametrize("shape", [(10, 6), (10, 6, 7)])
def test_batchnorm1d_groups(shape):
    torch.manual_seed(1)
    check_against_loop(nn.BatchNorm1d(6), torch.randn(*shape), group_sizes(10, 3))


def test_batchnorm3d_groups():
    torch.manual_seed(2)
    check_against_loop(nn.BatchNorm3d(4), torch.randn(8, 4, 3, 5, 5), [4, 4])


def test_convnet_channels_last_with_inplace_relu():
    """The demo's encoder: channels-last maps, a ReLU that writes over BatchNorm's output in place."""
    torch.manual_seed(3)
    net = ConvNet(widths=(8, 16, 16, 32)).train()

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.pool(self.net.forward_features(x))

    check_against_loop(Pooled(), torch.randn(20, 3, 16, 16), group_sizes(20, 3))


def test_rows_folded_into_the_batch_stay_with_their_sample():
    """An encoder that folds each sample's patches into the batch: groups of samples, not of rows."""
    torch.manual_seed(4)

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):  # (B, P, 3) -> (B * P, 3), sample-major
            return self.bn(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    module = Patches()
    x = torch.randn(6, 4, 3)
    reference = copy.deepcopy(module)
    with batchnorm_groups(module, [2, 4]):
        out = module(x)
    torch.testing.assert_close(out, torch.cat([reference(x[:2]), reference(x[2:])]))
    torch.testing.assert_close(module.bn.running_mean, reference.bn.running_mean)
    with pytest.raises(ValueError, match="rows for a batch of"), batchnorm_groups(module, [2, 3]):
        module(x)


def test_eval_mode_reads_the_running_statistics():
    torch.manual_seed(5)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(6, 3, 2, 2)
    with batchnorm_groups(bn, [3, 3]):
        out = bn(x)
    torch.testing.assert_close(out, nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias))
    assert int(bn.num_batches_tracked) == 0


def test_forward_restored_and_bad_input_refused():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(RuntimeError), batchnorm_groups(bn, [2, 2]):
        raise RuntimeError("inside")
    assert "forward" not in bn.__dict__  # the class's forward again
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(bn(x), nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True))
    with pytest.raises(ValueError, match="positive"), batchnorm_groups(bn, [2, 0]):
        pass
    sync = nn.Sequential(nn.SyncBatchNorm(3))
    assert groupable(bn) and groupable(nn.Linear(2, 2)) and not groupable(sync)
    with pytest.raises(TypeError, match="SyncBatchNorm"), batchnorm_groups(sync, [2, 2]):
        pass


def test_nested_blocks_restore_the_enclosing_grouping():
    torch.manual_seed(6)
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    x = torch.randn(8, 3, 2, 2)
    with batchnorm_groups(bn, [4, 4]):
        with batchnorm_groups(bn, [2, 2, 2, 2]):
            torch.testing.assert_close(bn(x), per_group(nn.BatchNorm2d(3, track_running_stats=False), x, [2] * 4))
        # back to the enclosing block's two groups, not to one batch
        torch.testing.assert_close(bn(x), per_group(nn.BatchNorm2d(3, track_running_stats=False), x, [4, 4]))
    assert "forward" not in bn.__dict__


def test_group_sizes_are_tensor_splits():
    for n, g in [(64, 4), (10, 3), (5, 5), (7, 2)]:
        assert group_sizes(n, g) == [len(p) for p in torch.arange(n).tensor_split(g)]


def test_shuffle_bn_keeps_batchnorm_per_process_on_gpus():
    """Several GPUs turn BatchNorm into SyncBatchNorm, but not under shuffle-BN, whose statistics are
    per process by design; a CPU or a single process keeps BatchNorm whatever the objective."""
    def synced(objective):
        return any(isinstance(m, nn.SyncBatchNorm) for m in objective.modules())

    assert synced(distributed_batchnorm(SimCLR(BNEncoder(), proj_hidden=8, proj_dim=4), 2, "cuda"))
    assert synced(distributed_batchnorm(MoCo(BNEncoder(), proj_hidden=8, proj_dim=4, queue_size=8, shuffle_bn=0), 2, "cuda"))
    moco = MoCo(BNEncoder(), proj_hidden=8, proj_dim=4, queue_size=8, shuffle_bn=2)
    assert not moco.sync_batchnorm and not synced(distributed_batchnorm(moco, 2, "cuda"))
    for processes, device in ((1, "cuda"), (2, "cpu")):
        assert not synced(distributed_batchnorm(SimCLR(BNEncoder(), proj_hidden=8, proj_dim=4), processes, device))


def test_a_compiled_pass_runs_a_pass_per_group(monkeypatch):
    """Under torch.compile the layers' forward cannot be swapped: MoCo's groups then take a pass each,
    with the same numbers."""
    import mmssl.objectives.moco as moco_module

    torch.manual_seed(6)
    encoder = BNEncoder()
    x = torch.randn(8, 3, 4, 4)
    reference = copy.deepcopy(encoder)
    one_pass = moco_module._grouped(reference, x, [4, 4])

    def refuse(*args, **kwargs):
        raise AssertionError("batchnorm_groups used while compiling")

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(moco_module, "batchnorm_groups", refuse)
    torch.testing.assert_close(moco_module._grouped(encoder, x, [4, 4]), one_pass)
