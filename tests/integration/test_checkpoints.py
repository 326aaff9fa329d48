"""Official layouts into mmssl's encoders: timm / MAE / transformers ViTs and torchvision ResNets,
built here with random weights and saved to tmp, give the same features after ``load_pretrained``
(the path ``--init`` takes); the sin-cos table's channel order; encoders saved before it changed, and
before the encoder settings moved into the config's ``encoder`` section."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

import mmssl.encoders.spectrogram  # noqa: F401  (registers spectrogram_vit)
from mmssl import ENCODERS, OBJECTIVES, load_encoder, save_encoder
from mmssl.encoders.convert import CheckpointError, init_objective, load_pretrained
from mmssl.encoders.io import build_encoder
from mmssl.encoders.vit import sincos_pos_embed

ROOT = Path(__file__).resolve().parents[2]
TINY = {"input_size": [16, 16], "patch": [4, 4], "dim": 32, "depth": 2, "heads": 4}
ATOL = 1e-5


def mae_reference_table(h: int, w: int, dim: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed written out plainly: the first half of the channels holds
    sin then cos of the column (w) coordinate, the second half of the row (h) coordinate."""
    table = torch.zeros(h * w, dim, dtype=torch.float64)
    quarter = dim // 4
    for i in range(h):
        for j in range(w):
            for k in range(quarter):
                freq = 1.0 / 10000 ** (k / quarter)
                row = table[i * w + j]
                row[k], row[quarter + k] = torch.tensor(j * freq).sin(), torch.tensor(j * freq).cos()
                row[2 * quarter + k], row[3 * quarter + k] = torch.tensor(i * freq).sin(), torch.tensor(i * freq).cos()
    return table.float()


def grid_order_table(grid, dim):
    """The table of encoders saved before ``pos_layout``: the axes' shares in grid order."""
    half = dim // (2 * len(grid))
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    parts = [f(c.reshape(-1, 1) * omega) for c in coords for f in (torch.sin, torch.cos)]
    pe = torch.cat(parts, 1)
    return torch.nn.functional.pad(pe, (0, dim - pe.shape[1])).float()


def test_sincos_table_is_maes_and_the_grid_layout_is_the_old_one():
    torch.testing.assert_close(sincos_pos_embed((3, 5), 16), mae_reference_table(3, 5, 16), atol=1e-6, rtol=0)
    torch.testing.assert_close(sincos_pos_embed((3, 5), 16, "grid"), grid_order_table((3, 5), 16))
    # tubelets and spectrograms use the same builder: for (t, h, w) the last axis comes first
    pe = sincos_pos_embed((2, 3, 4), 24)
    ref = grid_order_table((4, 3, 2), 24).reshape(4, 3, 2, 24).permute(2, 1, 0, 3).reshape(24, 24)
    torch.testing.assert_close(pe, ref)
    spec = ENCODERS.build("spectrogram_vit", n_mels=16, frames=32, patch=[8, 8], dim=32, depth=1, heads=4)
    torch.testing.assert_close(spec.vit.pos_embed[0], sincos_pos_embed((2, 4), 32))
    with pytest.raises(ValueError, match="pos_layout must be one of mae, grid"):
        ENCODERS.build("vit", pos_layout="hw", **TINY)


# ---------------------------------------------------------------- encoders saved before pos_layout

@pytest.mark.parametrize("name, kwargs, shape", [
    ("vit", TINY, (2, 3, 16, 16)),
    ("spectrogram_vit", {"n_mels": 16, "frames": 32, "patch": [8, 8], "dim": 32, "depth": 1, "heads": 4},
     (2, 1, 16, 32)),
])
def test_encoder_saved_before_pos_layout_keeps_its_features(tmp_path, name, kwargs, shape):
    torch.manual_seed(0)
    old = ENCODERS.build(name, pos_layout="grid", **kwargs).eval()  # the old code path's table
    save_encoder(old, tmp_path / "encoder")
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["encoder"]["kwargs"]["pos_layout"] == "grid"
    del config["encoder"]["kwargs"]["pos_layout"]  # a config.json written before the field existed
    (tmp_path / "encoder" / "config.json").write_text(json.dumps(config))
    x = torch.randn(shape)
    loaded = load_encoder(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), old.forward_features(x))
        # the same weights under the new default table give other features: the field matters
        new = ENCODERS.build(name, **kwargs).eval()
        new.load_state_dict(old.state_dict())
        assert (new.forward_features(x) - old.forward_features(x)).abs().max() > 1e-3
    # a new encoder's file records its layout, so a later change of default cannot alter it
    save_encoder(new, tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["encoder"]["kwargs"]["pos_layout"] == "mae"


# ---------------------------------------------------------------- encoders saved before the encoder section

_DEMO_VIT = {"size": "tiny", "dim": 128, "depth": 4, "heads": 4}
# (task, today's overrides, the spec that task wrote to DIR/encoder/config.json when the encoder settings were
# flat keys (backbone=, vit_dim=, channels= ...), at its defaults or with backbone=resnet18, input shape)
OLD_SPECS = [
    ("simclr_image", [], {"name": "convnet", "kwargs": {"widths": [32, 64, 128, 256]}}, (2, 3, 32, 32)),
    ("simclr_image", ["encoder.name=vit"], {"name": "vit", "kwargs": {
        "size": "tiny", "input_size": [32, 32], "patch": [4, 4], "channels": 3, "dim": 128, "depth": 4, "heads": 4,
        "cls_token": False, "pos_embed": "sincos", "pool": "mean"}}, (2, 3, 32, 32)),
    ("simclr_image", ["encoder.name=resnet", "encoder.resnet.channels_last=false"], {"name": "resnet", "kwargs": {
        "arch": "resnet18", "small_stem": True, "channels_last": False}}, (2, 3, 32, 32)),
    ("mae_image", [], {"name": "vit", "kwargs": {
        "size": "tiny", "input_size": [32, 32], "patch": [8, 8], "channels": 3, "dim": 128, "depth": 4, "heads": 4,
        "cls_token": False, "pos_embed": "sincos", "pool": "mean"}}, (2, 3, 32, 32)),
    ("tcn_video", [], {"name": "dense_convnet", "kwargs": {"widths": [32, 64, 128], "channels": 3}}, (2, 3, 32, 32)),
    ("colorize_video", ["encoder.name=resnet"], {"name": "resnet", "kwargs": {
        "arch": "resnet18", "channels": 1, "out_stride": 8}}, (2, 1, 32, 32)),
    ("mae_video", [], {"name": "vit", "kwargs": {
        "size": "tiny", "input_size": [8, 64, 64], "patch": [2, 8, 8], "channels": 3, "dim": 128, "depth": 4,
        "heads": 4}}, (1, 3, 8, 64, 64)),
    ("cpc_audio", [], {"name": "sequence", "kwargs": {
        "frames": {"name": "cpc_conv", "kwargs": {"channels": 128}},
        "context": {"name": "gru", "kwargs": {"dim": 256, "layers": 1}}}}, (2, 3200)),
    ("mae_audio", [], {"name": "spectrogram_vit", "kwargs": {
        "n_mels": 64, "frames": 128, "patch": [8, 8], **_DEMO_VIT}}, (1, 20480)),
]


@pytest.mark.parametrize("task_name, overrides, old_spec, shape", OLD_SPECS,
                         ids=[f"{t}{''.join(o[:1])}" for t, o, _, _ in OLD_SPECS])
def test_encoder_saved_before_the_encoder_section_loads_and_is_what_the_task_builds(
        tmp_path, task_name, overrides, old_spec, shape):
    from mmssl.run import resolve_config

    torch.manual_seed(0)
    old = ENCODERS.build(old_spec["name"], **old_spec["kwargs"]).eval()
    save_encoder(old, tmp_path / "encoder", task=task_name)  # DIR/encoder as training wrote it then
    written = json.loads((tmp_path / "encoder" / "config.json").read_text())["encoder"]
    assert written["name"] == old_spec["name"] and written["kwargs"].items() >= old_spec["kwargs"].items()
    loaded = load_encoder(tmp_path)
    # today's task config, through its encoder section, gives the same spec (plus constructor defaults
    # spelled out), so a saved encoder and a new run's are the same network
    task, cfg = resolve_config(task_name, None, {}, overrides)
    spec = task.encoder_spec(cfg)
    assert spec["name"] == old_spec["name"]
    assert {k: spec["kwargs"][k] for k in old_spec["kwargs"]} == old_spec["kwargs"]
    new = build_encoder(spec).eval()
    new.load_state_dict(old.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        want = old.forward_features(x)
        torch.testing.assert_close(loaded.forward_features(x), want)
        torch.testing.assert_close(new.forward_features(x), want)


# ---------------------------------------------------------------- class token, pooling

def test_class_token_pooling_and_mae():
    torch.manual_seed(0)
    vit = ENCODERS.build("vit", cls_token=True, pool="cls", **TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = vit.forward_features(x)
    assert tokens.shape == (2, 17, 32)
    torch.testing.assert_close(vit.pool(tokens), tokens[:, 0])
    assert vit.feature_map(x).shape == (2, 32, 4, 4)
    torch.testing.assert_close(vit.feature_map(x).flatten(2).transpose(1, 2), tokens[:, 1:])
    mean = ENCODERS.build("vit", cls_token=True, **TINY)
    torch.testing.assert_close(mean.pool(tokens), tokens[:, 1:].mean(1))  # the patch tokens only
    with pytest.raises(ValueError, match="pool must be"):
        ENCODERS.build("vit", pool="cls", **TINY)
    # MAE adds the class token after masking; the decoder sees it without a position and drops it
    mae = OBJECTIVES.build("mae", encoder=ENCODERS.build("vit", cls_token=True, **TINY), decoder_dim=16,
                           decoder_depth=1, decoder_heads=2)
    latent, _, ids_restore = mae.forward_encoder(x)
    pred = mae.forward_decoder(latent, ids_restore)
    assert latent.shape == (2, 1 + 4, 32) and pred.shape == (2, 16, 48)
    masked = ids_restore.argsort(dim=1)[:, 4:]  # the head on the masked tokens only gives those rows
    torch.testing.assert_close(mae.forward_decoder(latent, ids_restore, masked_only=True),
                               torch.gather(pred, 1, masked[..., None].expand(-1, -1, 48)))
    out = mae({"input": x})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and mae.encoder.cls_token.grad.abs().sum() > 0


def test_learned_positions_resample_to_other_grids():
    vit = ENCODERS.build("vit", pos_embed="learned", **TINY)
    assert "pos_embed" in vit.state_dict() and vit.pos_embed.requires_grad
    torch.testing.assert_close(vit.positions((4, 4)), vit.pos_embed)
    assert vit.forward_features(torch.randn(1, 3, 8, 24)).shape == (1, 12, 32)


# ---------------------------------------------------------------- official layouts

def check(encoder, tokens, pooled, x):
    """mmssl's token map and pooled feature equal the source model's (float32)."""
    with torch.no_grad():
        ours = encoder.forward_features(x)
        assert ours.shape == tokens.shape
        assert (ours - tokens).abs().max() <= ATOL
        assert (encoder.pool(ours) - pooled).abs().max() <= ATOL


def test_timm_vit_with_class_token_and_learned_positions(tmp_path):
    torch.manual_seed(0)
    src = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2,
                                                           num_heads=4, num_classes=5).eval()
    with torch.no_grad():  # timm starts the class token at zero and the norms at 1 / 0: make them count
        for name, p in src.named_parameters():
            if "norm" in name or "cls_token" in name:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    enc = load_pretrained(ENCODERS.build("vit", cls_token=True, pool="cls", pos_embed="learned", **TINY).eval(),
                          tmp_path / "vit.pth")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = src.forward_features(x)
        check(enc, tokens, src.forward_head(tokens, pre_logits=True), x)
    # the same weights without a learned table, or without a class token, are refused in one line
    with pytest.raises(CheckpointError, match="pos_embed: .* not this encoder's fixed sin-cos table"):
        load_pretrained(ENCODERS.build("vit", cls_token=True, **TINY), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="cls_token: the checkpoint has a class token"):
        load_pretrained(ENCODERS.build("vit", pos_embed="learned", **TINY), tmp_path / "vit.pth")


def mae_style_timm(embed_dim=32, depth=2, heads=4, img=16, patch=4):
    """A timm ViT as the MAE code builds its encoder: no class token here, the fixed sin-cos table
    (MAE's layout) as pos_embed, every token normalised and then averaged."""
    src = timm.models.vision_transformer.VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=heads, num_classes=0,
        class_token=False, global_pool="avg", fc_norm=False).eval()
    with torch.no_grad():
        src.pos_embed.copy_(mae_reference_table(img // patch, img // patch, embed_dim)[None])
        for name, p in src.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return src


def test_mae_checkpoint_with_sincos_table(tmp_path):
    torch.manual_seed(0)
    src = mae_style_timm()
    state = dict(src.state_dict())
    state["decoder_embed.weight"] = torch.randn(16, 32)  # MAE's pre-training checkpoints carry the decoder
    state["mask_token"] = torch.zeros(1, 1, 16)
    torch.save({"model": state, "epoch": 3}, tmp_path / "mae.pth")
    enc = load_pretrained(ENCODERS.build("vit", **TINY).eval(), tmp_path / "mae.pth")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = src.forward_features(x)
        check(enc, tokens, src.forward_head(tokens, pre_logits=True), x)
    # the old channel order is not MAE's table: loading names the position table
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_pretrained(ENCODERS.build("vit", pos_layout="grid", **TINY), tmp_path / "mae.pth")


@pytest.mark.parametrize("kind", ["vit", "vit_mae"])
def test_transformers_vit_folder(tmp_path, kind):
    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "image_size": 16, "patch_size": 4}
    if kind == "vit":
        src = transformers.ViTModel(transformers.ViTConfig(layer_norm_eps=1e-6, **sizes)).eval()
        with torch.no_grad():
            for name, p in src.named_parameters():
                if "layernorm" in name or "cls_token" in name:
                    p.add_(torch.randn_like(p) * 0.1)
        src.save_pretrained(tmp_path / "hf")
    else:
        src = tiny_vit_mae(tmp_path / "hf", **sizes)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        if kind == "vit":
            tokens = src(pixel_values=x).last_hidden_state
        else:  # noise in token order keeps every token in place
            tokens = src(pixel_values=x, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    pos = "learned" if kind == "vit" else "sincos"  # ViTMAE's table is MAE's sin-cos one, ViT's is learned
    for pool, pooled in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(1))):
        enc = ENCODERS.build("vit", cls_token=True, pool=pool, pos_embed=pos, **TINY).eval()
        check(load_pretrained(enc, tmp_path / "hf"), tokens, pooled, x)
    # the in-memory names of transformers 5 (a torch.save of the module's state dict) load too
    torch.save(src.state_dict(), tmp_path / "hf.bin")
    enc = load_pretrained(ENCODERS.build("vit", cls_token=True, pool="cls", pos_embed=pos, **TINY).eval(),
                          tmp_path / "hf.bin")
    check(enc, tokens, tokens[:, 0], x)


def test_torchvision_resnet18(tmp_path):
    import torchvision

    torch.manual_seed(0)
    src = torchvision.models.resnet18(weights=None, num_classes=7)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        src.train()(torch.randn(4, 3, 64, 64))
    src.eval()
    save_file(src.state_dict(), str(tmp_path / "resnet18.safetensors"))
    enc = load_pretrained(ENCODERS.build("resnet").eval(), tmp_path / "resnet18.safetensors")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = src.layer4(src.layer3(src.layer2(src.layer1(src.maxpool(src.relu(src.bn1(src.conv1(x))))))))
        check(enc, fmap.flatten(2).transpose(1, 2), torch.flatten(src.avgpool(fmap), 1), x)
    # the stride-8 trunk skips layer4; the CIFAR stem does not fit the 7x7 convolution
    load_pretrained(ENCODERS.build("resnet", out_stride=8), tmp_path / "resnet18.safetensors")
    with pytest.raises(CheckpointError, match=r"conv1.weight: shape \[64, 3, 7, 7\] in the checkpoint, "
                                              r"\[64, 3, 3, 3\] in the encoder"):
        load_pretrained(ENCODERS.build("resnet", small_stem=True), tmp_path / "resnet18.safetensors")


def test_bad_checkpoints_give_one_clear_line(tmp_path):
    vit = ENCODERS.build("vit", **TINY)
    with pytest.raises(CheckpointError, match="no such file"):
        load_pretrained(vit, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read it as a state dict"):
        load_pretrained(vit, tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        load_pretrained(vit, tmp_path / "other.pth")
    torch.manual_seed(0)
    torch.save(mae_style_timm(img=32, patch=8).state_dict(), tmp_path / "p8.pth")  # the same 4 x 4 grid
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight: shape \[32, 192\] in the checkpoint, "
                                              r"\[32, 48\] in the encoder"):
        load_pretrained(vit, tmp_path / "p8.pth")
    torch.save(mae_style_timm(embed_dim=48).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"pos_embed: shape \[1, 16, 48\] in the checkpoint"):
        load_pretrained(vit, tmp_path / "wide.pth")
    torch.save(mae_style_timm(depth=3).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match="blocks.2.*the encoder has no blocks.2"):
        load_pretrained(vit, tmp_path / "deep.pth")
    state = mae_style_timm().state_dict()
    state["blocks.0.ls1.gamma"] = torch.ones(32)  # layer scale: a ViT variant mmssl lacks
    torch.save(state, tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match="blocks.0.ls1.gamma: mmssl's ViT has no place"):
        load_pretrained(vit, tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match="cannot initialise a ResNet"):
        load_pretrained(ENCODERS.build("resnet"), tmp_path / "deep.pth")


def test_init_reaches_the_momentum_encoder(tmp_path):
    import torchvision
    from safetensors.torch import load_file

    save_file(torchvision.models.resnet18(weights=None).state_dict(), str(tmp_path / "r.safetensors"))
    want = load_file(str(tmp_path / "r.safetensors"))
    moco = OBJECTIVES.build("moco", encoder=ENCODERS.build("resnet"))
    assert not torch.equal(moco.momentum_encoder.conv1.weight, want["conv1.weight"])
    init_objective(moco, tmp_path / "r.safetensors")
    for enc in (moco.export_encoder(), moco.momentum_encoder):
        for key in ("conv1.weight", "layer4.1.bn2.running_var"):
            assert torch.equal(enc.state_dict()[key], want[key])


# ---------------------------------------------------------------- train.py --init

def tiny_vit_mae(tmp_path, **sizes):
    """A transformers ViTMAEModel with random weights (and MAE's sin-cos table) saved as a folder."""
    config = transformers.ViTMAEConfig(mask_ratio=0.0, layer_norm_eps=1e-6, **sizes)
    src = transformers.ViTMAEModel(config).eval()
    # transformers 5.24 marks the patch projection initialised before the embeddings' own
    # initialisation runs, which leaves the position table at zero: run it, it writes MAE's table
    src.embeddings.patch_embeddings.projection._is_hf_initialized = False
    src.embeddings.initialize_weights()
    assert src.embeddings.position_embeddings[0, 1:].abs().sum() > 0
    with torch.no_grad():
        for name, p in src.named_parameters():
            if "layernorm" in name or "cls_token" in name:
                p.add_(torch.randn_like(p) * 0.1)
    src.save_pretrained(tmp_path)
    return src


@pytest.mark.slow
def test_train_py_init_starts_from_the_checkpoint(tmp_path):
    """mae_image's ViT (128 wide, 4 blocks, 8 px patches on 32 px images, here with a class token) from a
    transformers ViTMAE folder; with lr=0 the saved encoder is the checkpoint, so its features are the source's."""
    torch.manual_seed(0)
    src = tiny_vit_mae(tmp_path / "hf", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=512, image_size=32, patch_size=8)
    out = tmp_path / "run"
    args = ["--task", "mae_image", "--init", str(tmp_path / "hf"), "--output-dir", str(out), "max_steps=1",
            "evaluate=false", "batch_size=4", "num_workers=0", "monitor_every=0", "lr=0", "warmup_steps=0",
            "encoder.vit.cls_token=true"]
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = src(pixel_values=x, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
    check(load_encoder(out), tokens, tokens[:, 1:].mean(1), x)
    # without the class token the checkpoint does not fit: one error line, before any step
    bad = subprocess.run([sys.executable, "train.py", *args[:-1], "--output-dir", str(tmp_path / "bad")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode != 0 and len(lines) == 1, bad.stderr
    assert lines[0].startswith("error: cls_token: the checkpoint has a class token") and "encoder.vit.cls_token" in lines[0]
