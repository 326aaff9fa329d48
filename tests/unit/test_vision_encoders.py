"""Patchify, ViT and ResNet: layouts, shapes, save/load, and torchvision equivalence."""
import json
import math

import pytest
import torch

from mmssl import ENCODERS, load_encoder, save_encoder
from mmssl.encoders.patchify import Patchify
from mmssl.encoders.vit import Block, sincos_pos_embed

TINY_VIT = {"dim": 32, "depth": 2, "heads": 4}


# ---------------------------------------------------------------- patchify

@pytest.mark.parametrize("shape, patch", [
    ((2, 3, 8, 12), (4, 4)),        # image
    ((2, 1, 16, 20), (4, 5)),       # spectrogram (B, 1, F, T)
    ((2, 3, 4, 8, 8), (2, 4, 4)),   # video tubelets
    ((2, 2, 30), (5,)),             # multi-channel waveform frames
])
def test_patchify_round_trip(shape, patch):
    x = torch.randn(shape)
    p = Patchify(patch, channels=shape[1])
    grid = p.grid(shape[2:])
    tokens = p.to_patches(x)
    assert tokens.shape == (shape[0], math.prod(grid), p.patch_dim) and p.patch_dim == shape[1] * math.prod(patch)
    assert torch.equal(p.from_patches(tokens, grid), x)


def test_patchify_layout_and_mono_waveform():
    x = torch.arange(2 * 3 * 4 * 4.0).reshape(2, 3, 4, 4)
    tokens = Patchify((2, 2), 3).to_patches(x)
    # token 1 is the top-right patch, values laid out (ph, pw, c) as in MAE
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1))
    wav = torch.randn(3, 40)
    p = Patchify([8], 1)  # a list, as the spec comes back from JSON
    frames = p.to_patches(wav)
    assert frames.shape == (3, 5, 8) and torch.equal(frames[1, 2], wav[1, 16:24])
    assert torch.equal(p.from_patches(frames, p.grid(wav.shape)), wav[:, None])


def test_patchify_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="size 30 on patched axis 1 is not divisible by the patch size 4"):
        Patchify((4, 4), 3).to_patches(torch.randn(1, 3, 32, 30))
    with pytest.raises(ValueError, match="not divisible"):
        ENCODERS.build("vit", input_size=[32, 30], patch=[4, 4], **TINY_VIT)
    with pytest.raises(ValueError, match="expected 3 channels"):
        Patchify((4, 4), 3).to_patches(torch.randn(1, 1, 8, 8))


# ---------------------------------------------------------------- ViT

@pytest.mark.parametrize("kwargs, shape, n", [
    ({}, (2, 3, 32, 32), 64),
    ({"input_size": [64, 48], "patch": [16, 16], "channels": 1}, (2, 1, 64, 48), 12),
    ({"input_size": [4, 16, 16], "patch": [2, 8, 8]}, (2, 3, 4, 16, 16), 8),
])
def test_vit_tokens(kwargs, shape, n):
    vit = ENCODERS.build("vit", **kwargs, **TINY_VIT)
    tokens = vit.forward_features(torch.randn(shape))
    assert tokens.shape == (2, n, 32) and vit.num_patches == n and vit.embed_dim == 32
    assert vit(torch.randn(shape)).shape == (2, 32)
    # another input size gets the sin-cos positions of its own grid (SwAV's local crops)
    bigger = vit.forward_features(torch.randn(*shape[:-1], shape[-1] * 2))
    assert bigger.shape == (2, 2 * n, 32)


def test_vit_presets_and_positions():
    vit = ENCODERS.build("vit", size="small", depth=1)
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].heads) == (384, 1, 6)
    pe = sincos_pos_embed((2, 3, 4), 32)  # 32 is not a multiple of 6: the last 2 channels stay zero
    assert pe.shape == (24, 32) and len({tuple(r.tolist()) for r in pe}) == 24 and pe[:, 30:].abs().sum() == 0


def test_sdpa_block_equals_plain_attention():
    torch.manual_seed(0)
    block = Block(dim=24, heads=3)
    x = torch.randn(2, 7, 24)
    q, k, v = block.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    ref = block.proj((attn @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(block.attention(x), ref, atol=1e-5, rtol=1e-5)
    # pre-norm residual wiring, with the reference attention
    xn = block.norm1(x)
    q, k, v = block.qkv(xn).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    h = x + block.proj((attn @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)), atol=1e-5, rtol=1e-5)


class _CausalReference(torch.nn.Module):
    """The causal context's block as it was written before it shared ``Block``: the same parameter
    names, PyTorch's default LayerNorm, and the attention masked by hand."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        x = x + self.proj((torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


def test_causal_block_loads_the_old_keys_and_matches_the_plain_reference():
    from mmssl.encoders.context import CausalTransformerContext

    torch.manual_seed(0)
    ref = _CausalReference(24, 3)
    context = CausalTransformerContext(in_dim=5, dim=24, layers=1, heads=3)
    block = context.blocks[0]
    assert set(block.state_dict()) == set(ref.state_dict())  # saved contexts keep loading
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 24)
    torch.testing.assert_close(block(x), ref(x), atol=1e-5, rtol=1e-5)
    # causal: changing the last token leaves every earlier output as it was
    x2 = x.clone()
    x2[:, -1] += 1
    assert torch.equal(block(x2)[:, :-1], block(x)[:, :-1])


@pytest.mark.parametrize("name, kwargs, shape", [
    ("vit", {"input_size": [4, 16, 16], "patch": [2, 8, 8], **TINY_VIT}, (2, 3, 4, 16, 16)),
    ("resnet", {"small_stem": True, "channels": 1}, (2, 1, 16, 16)),
    ("resnet", {"out_stride": 8, "channels": 1}, (2, 1, 32, 32)),
])
def test_save_load_round_trip(tmp_path, name, kwargs, shape):
    enc = ENCODERS.build(name, **kwargs).eval()
    save_encoder(enc, tmp_path / "encoder", modality="test")
    assert json.loads((tmp_path / "encoder" / "config.json").read_text())["encoder"]["name"] == name
    loaded = load_encoder(tmp_path)
    x = torch.randn(shape)
    torch.testing.assert_close(loaded.forward_features(x), enc.forward_features(x))
    assert loaded.meta["modality"] == "test"


# ---------------------------------------------------------------- ResNet

def test_resnet_small_stem_tokens():
    enc = ENCODERS.build("resnet", arch="resnet18", small_stem=True, channels_last=True)
    tokens = enc.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16, 512) and enc.embed_dim == 512
    torch.testing.assert_close(enc(torch.randn(2, 3, 32, 32)).shape, torch.Size([2, 512]))
    assert ENCODERS.build("resnet").forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 4, 512)
    with pytest.raises(ValueError, match="unknown ResNet arch"):
        ENCODERS.build("resnet", arch="resnet7")


@pytest.mark.parametrize("kwargs, size, shape, stride", [
    ({}, (64, 96), (512, 2, 3), 32),
    ({"out_stride": 16}, (64, 96), (512, 4, 6), 16),
    ({"out_stride": 8}, (480, 854), (256, 60, 107), 8),  # a DAVIS frame: the CRW trunk's stride-8 map
    ({"out_stride": 8, "small_stem": True}, (16, 16), (256, 8, 8), 2),
    ({"arch": "resnet50", "out_stride": 8}, (32, 32), (1024, 4, 4), 8),
])
def test_resnet_out_stride_maps(kwargs, size, shape, stride):
    enc = ENCODERS.build("resnet", **kwargs).eval()
    with torch.no_grad():
        fmap = enc.feature_map(torch.randn(1, 3, *size))
    assert fmap.shape == (1, *shape) and enc.stride == stride and enc.embed_dim == shape[0]
    has_layer4 = any(k.startswith("layer4.") for k in enc.state_dict())
    assert has_layer4 == (kwargs.get("out_stride", 32) != 8)


def test_resnet_default_keeps_torchvision_names():
    import torchvision

    tv = torchvision.models.resnet18(weights=None).state_dict()
    tv = {k: v.shape for k, v in tv.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ENCODERS.build("resnet").state_dict().items()} == tv
    with pytest.raises(ValueError, match="out_stride must be one of 8, 16, 32"):
        ENCODERS.build("resnet", out_stride=4)


@pytest.mark.parametrize("out_stride, dilate", [(8, [False, True, True]), (16, [False, False, True])])
def test_resnet_dilation_equals_torchvision(out_stride, dilate):
    """Bottleneck ResNets: the same network as torchvision's replace_stride_with_dilation (layer4 dropped at 8)."""
    import torchvision

    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate).eval()
    enc = ENCODERS.build("resnet", arch="resnet50", out_stride=out_stride).eval()
    enc.load_state_dict({k: v for k, v in tv.state_dict().items() if k in enc.state_dict()})
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        h = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
        want = tv.layer4(h) if out_stride == 16 else h
        torch.testing.assert_close(enc.feature_map(x), want)


def test_image_tasks_build_channels_last_resnets_on_request_and_on_cuda_by_default(monkeypatch):
    from mmssl.run import resolve_config

    def encoder(*overrides):
        task, cfg = resolve_config("simclr_image", None, {"output_dir": "unused"}, ["encoder.name=resnet", *overrides])
        return task.build_encoder(cfg)

    assert encoder("encoder.resnet.channels_last=true").channels_last
    assert not encoder("encoder.resnet.channels_last=false").channels_last
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not encoder().channels_last
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert encoder().channels_last
