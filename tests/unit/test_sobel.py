"""The Sobel front end (mmssl.encoders.sobel, DeepCluster arXiv:1807.05520): its gradients against
a plain reference on hand-made images, its fixed filter, save / load, and the image tasks' key."""
import json

import pytest
import torch
import torch.nn.functional as F

import mmssl.tasks  # noqa: F401  (registers every task)
from mmssl import ENCODERS, load_encoder, save_encoder
from mmssl.modalities.vision.augment import MEAN, STD, normalize
from mmssl.run import resolve_config

TINY_CONVNET = {"name": "convnet", "kwargs": {"widths": [4, 8]}}


def sobel(inner=TINY_CONVNET):
    return ENCODERS.build("sobel", encoder=inner).eval()


def reference_gradients(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) -> (B, 2, H, W): luma, border pixels repeated, then the Sobel
    kernels as the DeepCluster code writes them (x: left minus right, y: top minus bottom)."""
    gray = 0.2989 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    gray = torch.cat([gray[..., :1], gray, gray[..., -1:]], dim=-1)  # repeat the left and right columns
    gray = torch.cat([gray[..., :1, :], gray, gray[..., -1:, :]], dim=-2)  # then the top and bottom rows
    gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    return F.conv2d(gray, torch.stack([gx, gx.T])[:, None])


def two_halves(left, right, size=8, vertical=True) -> torch.Tensor:
    """(1, 3, size, size) RGB in [0, 1]: colour ``left`` on the left (top) half, ``right`` on the other."""
    img = torch.tensor(left, dtype=torch.float32)[:, None, None].repeat(1, size, size)
    half = (slice(None), slice(None), slice(size // 2, None)) if vertical else (slice(None), slice(size // 2, None))
    img[half] = torch.tensor(right, dtype=torch.float32)[:, None, None]
    return img[None]


def test_a_vertical_edge_gives_an_x_gradient_only_as_the_reference():
    rgb = two_halves((0.2, 0.2, 0.2), (0.7, 0.7, 0.7))  # dark left, light right
    out = sobel().gradients(normalize(rgb))
    torch.testing.assert_close(out, reference_gradients(rgb), atol=1e-5, rtol=1e-5)
    gx, gy = out[0, 0], out[0, 1]
    assert gy.abs().max() < 1e-5
    # the two columns beside the edge see 1 + 2 + 1 = 4 times the step (left minus right); the rest nothing
    step = (0.2989 + 0.587 + 0.114) * (0.2 - 0.7)  # luma step of the two greys
    torch.testing.assert_close(gx[:, 3:5], torch.full((8, 2), 4 * step), atol=1e-5, rtol=0)
    assert gx[:, :3].abs().max() < 1e-5 and gx[:, 5:].abs().max() < 1e-5
    # the same edge turned horizontal: a y gradient only
    out = sobel().gradients(normalize(two_halves((0.2, 0.2, 0.2), (0.7, 0.7, 0.7), vertical=False)))
    assert out[0, 0].abs().max() < 1e-5 and out[0, 1].abs().max() > 1.9


def test_colours_of_equal_luma_give_no_response_and_a_brightness_shift_changes_nothing():
    red = (0.8, 0.2, 0.3)
    luma = 0.2989 * 0.8 + 0.587 * 0.2 + 0.114 * 0.3
    green = (0.1, (luma - 0.2989 * 0.1 - 0.114 * 0.6) / 0.587, 0.6)  # another colour, the same luma
    rgb = two_halves(red, green)
    enc = sobel()
    assert enc.gradients(normalize(rgb)).abs().max() < 1e-5
    # the filter sees the luma: averaging the normalised channels instead (the authors' code) would
    # see an edge between these two colours
    average = normalize(rgb).mean(1)[0, 0]  # (W,) along a row
    assert (average[3] - average[4]).abs() > 0.1
    # and a brightness offset over the whole image, borders included, leaves the features unchanged
    x = torch.rand(2, 3, 16, 16) * 0.5
    torch.testing.assert_close(enc(normalize(x + 0.3)), enc(normalize(x)), atol=1e-5, rtol=1e-5)


def test_the_filter_is_buffers_that_take_no_gradient_and_the_inner_encoder_reads_two_channels():
    enc = ENCODERS.build("sobel", encoder=TINY_CONVNET)
    inner = ENCODERS.build("convnet", widths=[4, 8], channels=2)
    params = dict(enc.named_parameters())
    assert set(params) == {f"encoder.{n}" for n, _ in inner.named_parameters()}
    assert params["encoder.net.0.weight"].shape[1] == 2
    assert set(enc.state_dict()) == {f"encoder.{n}" for n in inner.state_dict()}  # the filter follows from the spec
    buffers = dict(enc.named_buffers())
    assert buffers["kernels"].shape == (2, 1, 3, 3) and not any(b.requires_grad for b in buffers.values())
    enc(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
    assert all(b.grad is None for b in enc.buffers())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert enc.embed_dim == 8 and enc.forward_features(torch.randn(2, 3, 8, 8)).shape == (2, 4, 8)


def test_its_normalisation_defaults_are_the_image_tasks():
    enc = sobel()
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(enc.std.flatten(), torch.tensor(STD))


@pytest.mark.parametrize("inner, size", [
    (TINY_CONVNET, 8),
    ({"name": "resnet", "kwargs": {"arch": "resnet18", "small_stem": True}}, 8),
    ({"name": "vit", "kwargs": {"input_size": [8, 8], "patch": [4, 4], "dim": 16, "depth": 1, "heads": 2}}, 8),
])
def test_save_load_round_trip_gives_identical_features(tmp_path, inner, size):
    torch.manual_seed(0)
    enc = sobel(inner)
    with torch.no_grad():  # moved BatchNorm statistics, so the saved state is not the initial one
        enc.train()(torch.randn(4, 3, size, size))
    enc.eval()
    save_encoder(enc, tmp_path / "encoder", modality="image")
    saved = json.loads((tmp_path / "encoder" / "config.json").read_text())["encoder"]
    assert saved["name"] == "sobel" and saved["kwargs"]["encoder"]["name"] == inner["name"]
    if inner["name"] == "vit":  # the inner ViT's legacy kwarg is written out, as for a bare ViT
        assert saved["kwargs"]["encoder"]["kwargs"]["pos_layout"] == "mae"
    loaded = load_encoder(tmp_path)
    x = normalize(torch.rand(3, 3, size, size))
    assert torch.equal(loaded.forward_features(x), enc.forward_features(x))
    # the random-encoder baseline rebuilds the same architecture from the loaded spec
    torch.manual_seed(1)
    assert ENCODERS.build(loaded.spec["name"], **loaded.spec["kwargs"]).forward_features(x).shape == \
        enc.forward_features(x).shape


def test_a_saved_wrapped_vit_without_its_legacy_kwarg_loads_with_the_old_layout(tmp_path):
    enc = sobel({"name": "vit", "kwargs": {"input_size": [8, 8], "patch": [4, 4], "dim": 16, "depth": 1,
                                           "heads": 2}})
    save_encoder(enc, tmp_path / "encoder")
    path = tmp_path / "encoder" / "config.json"
    meta = json.loads(path.read_text())
    del meta["encoder"]["kwargs"]["encoder"]["kwargs"]["pos_layout"]  # as written before the kwarg existed
    path.write_text(json.dumps(meta))
    assert load_encoder(tmp_path).encoder.pos_layout == "grid"


@pytest.mark.parametrize("inner, match", [
    ({"name": "cpc_conv", "kwargs": {"channels": 8}},
     r"^the sobel encoder wraps an image encoder that takes input channels \(convnet, resnet, vit\), not 'cpc_conv'$"),
    ({"name": "convnet", "kwargs": {"channels": 3}},
     r"^the sobel encoder feeds its convnet 2 channels \(the x and y gradients\); its spec asks for 3$"),
])
def test_a_bad_inner_encoder_is_one_clear_error(inner, match):
    with pytest.raises(ValueError, match=match):
        ENCODERS.build("sobel", encoder=inner)


def test_image_tasks_wrap_their_chosen_encoder_when_encoder_sobel_is_on():
    task, cfg = resolve_config("deepcluster_image", None, {}, [])
    spec = task.encoder_spec(cfg)
    assert spec == {"name": "sobel", "kwargs": {"encoder": {"name": "convnet", "kwargs": {"widths": [32, 64, 128, 256]}},
                                                "mean": list(MEAN), "std": list(STD)}}
    assert task.encoder_names() == "convnet | vit | resnet (Sobel input)"
    assert task.encoder_spec(resolve_config("deepcluster_image", None, {}, ["encoder.sobel=false"])[1])["name"] == \
        "convnet"
    task, cfg = resolve_config("simclr_image", None, {}, ["encoder.sobel=true", "encoder.name=vit"])
    spec = task.encoder_spec(cfg)
    assert (spec["name"], spec["kwargs"]["encoder"]["name"], spec["kwargs"]["encoder"]["kwargs"]["channels"]) == (
        "sobel", "vit", 2)
    encoder = task.build_encoder(cfg)
    assert encoder.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 128)
    # the evaluation's random encoder: the same architecture, from the saved spec
    assert task.random_encoder(cfg, encoder).spec == encoder.spec
    # the tile tasks' encoder section has no such option: their spec is the bare conv net
    task, cfg = resolve_config("jigsaw_image", None, {}, [])
    assert task.encoder_spec(cfg)["name"] == "convnet"
