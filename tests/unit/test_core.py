"""Registry, config overrides, encoders and the registry-wide smoke test."""
import dataclasses

import pytest
import torch
from conftest import tiny_cpc
from host_reads import host_reads

import mmssl.tasks  # noqa: F401
from mmssl import ENCODERS, TASKS, load_encoder, save_encoder
from mmssl.config import ConfigError, apply_overrides, parse_override
from mmssl.encoders.io import build_encoder
from mmssl.objectives.base import Objective, metric_name_ok
from mmssl.registry import Registry, RegistryError
from mmssl.tasks.cpc_audio import CPCAudioConfig

# Tiny settings per task for the smoke test; a task registered without an entry fails it.
_IMG_RUN = {"batch_size": 4, "num_workers": 0, "image_size": 16}
_IMG = {**_IMG_RUN, "encoder.convnet.widths": "8,8,8,8"}
_VIT = {**_IMG_RUN, "encoder.name": "vit", "encoder.vit.dim": 16, "encoder.vit.depth": 1, "encoder.vit.heads": 2,
        "encoder.vit.patch": 4}
_HEAD = {"objective.proj_hidden": 16, "objective.proj_dim": 8}
_VID = {"batch_size": 2, "num_workers": 0, "frame_size": 32, "encoder.dense_convnet.widths": "8,8,8"}
_AUDIO = {"batch_size": 4, "num_workers": 0, "encoder.cpc.channels": 16, "encoder.cpc.context_dim": 16,
          "crop_samples": 3200}
MULTICROP = "[{crops: 2, min_scale: 0.4, blur_prob: 0.0}, {crops: 2, size: 8, min_scale: 0.05, max_scale: 0.4, blur_prob: 0.0}]"
SMOKE = {
    "cpc_audio": tiny_cpc(dataset="demo"),
    "simclr_audio": {**_AUDIO, **_HEAD},
    "mae_audio": {"batch_size": 4, "num_workers": 0, "crop_samples": 5120, "n_mels": 16, "encoder.vit.dim": 16,
                  "encoder.vit.depth": 1, "encoder.vit.heads": 2,
                  "objective.decoder_dim": 16, "objective.decoder_depth": 1, "objective.decoder_heads": 2},
    "simclr_image": {**_IMG, **_HEAD},
    "moco_image": {**_IMG, **_HEAD, "objective.queue_size": 16},
    "densecl_image": {**_IMG, **_HEAD, "objective.queue_size": 16, "objective.dense_queue_size": 16},
    "byol_image": {**_IMG, **_HEAD, "objective.pred_hidden": 16},
    "simsiam_image": {**_IMG, "objective.proj_dim": 16, "objective.pred_hidden": 8},
    # multi-crop (the demos take two crops): 2 global + 2 local crops of 8 px
    "swav_image": {**_IMG, **_HEAD, "objective.num_prototypes": 8, "views": MULTICROP, "objective.queue_size": 8},
    "dino_image": {**_IMG, "objective.out_dim": 16, "objective.hidden_dim": 16, "objective.bottleneck_dim": 8,
                   "views": MULTICROP},
    "rotnet_image": {**_IMG},
    "exemplar_image": {**_IMG, "objective.dim": 8, "objective.num_negatives": 16},
    "deepcluster_image": {**_IMG, "objective.num_clusters": 4},
    "jigsaw_image": {**_IMG, "objective.tile_dim": 8, "objective.hidden": 16, "objective.num_permutations": 10},
    "relative_position_image": {**_IMG, "objective.patch_size": 4, "objective.gap": 1, "objective.jitter": 1,
                                "objective.patch_dim": 8, "objective.hidden": 16},
    "cpc_image": {**_IMG, "objective.patch_size": 4, "objective.patch_stride": 2, "objective.steps": 2,
                  "objective.num_negatives": 8, "objective.context_dim": 8},
    "context_encoder_image": {**_IMG},
    "split_brain_image": {**_IMG, "objective.ab_bins": 4, "objective.l_bins": 8},
    "context_encoder_image/random_region": {**_IMG, "objective.mask": "random_region", "objective.adv_weight": 0.001},
    "barlow_twins_image": {**_IMG, **_HEAD},
    "vicreg_image": {**_IMG, **_HEAD},
    "supcon_image": {**_IMG, **_HEAD},
    "mae_image": {**_VIT, "objective.decoder_dim": 16, "objective.decoder_depth": 1, "objective.decoder_heads": 2},
    # the other backbones, through a two-view and a multi-crop method (local crops of another size)
    "simclr_image/resnet18": {**_IMG, **_HEAD, "encoder.name": "resnet"},
    "swav_image/vit": {**_VIT, **_HEAD, "objective.num_prototypes": 8, "views": MULTICROP},
    "rotnet_image/vit": {**_VIT},
    "rotnet_image/sobel_resnet18": {**_IMG, "encoder.sobel": "true", "encoder.name": "resnet"},  # DeepCluster's input
    "colorize_video": {**_VID, "quantizer_frames": 8},
    "cpc_video": {**_VID, "clip_len": 4, "objective.steps": 2, "objective.num_negatives": 8},
    "cpc_video/dense": {**_VID, "clip_len": 4, "objective.steps": 2, "objective.num_negatives": 8,
                        "objective.spatial": "dense", "objective.context": "conv_gru", "objective.jitter": 1},
    "tcn_video": {**_VID, "anchors": 4, "objective.embed_dim": 8},
    "tcn_video/single": {**_VID, "anchors": 4, "objective.embed_dim": 8, "views": "single",
                         "objective.loss": "npairs"},
    "mae_video": {"batch_size": 2, "num_workers": 0, "frame_size": 32, "clip_len": 4, "encoder.vit.dim": 16,
                  "encoder.vit.depth": 1, "encoder.vit.heads": 2, "objective.decoder_dim": 16,
                  "objective.decoder_depth": 1, "objective.decoder_heads": 2},
    "colorize_video/resnet18": {**_VID, "quantizer_frames": 8, "encoder.name": "resnet"},
}


def test_registry_rejects_duplicates_and_lists_known_names():
    reg = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(object)
    with pytest.raises(RegistryError, match="unknown widget 'b'; known: a"):
        reg.get("b")


def test_a_registered_task_takes_its_name_and_lists_its_encoder_section():
    from mmssl.tasks.image_base import ImageTask
    from mmssl.tasks.jigsaw_image import JigsawImageConfig

    reg = Registry("task")

    @reg.register("unnamed_image")
    class Unnamed(ImageTask):
        Config = JigsawImageConfig

    assert Unnamed.name == "unnamed_image" and Unnamed().default_config().output_dir == "runs/unnamed_image"
    assert Unnamed.encoder_names() == "convnet | resnet"  # the choices of the config's encoder section
    assert TASKS.get("mae_video").encoder_names() == "vit (tubelets)"  # a described encoder keeps its text
    for name in TASKS:
        assert TASKS.get(name).name == name


def test_overrides_are_typed():
    cfg = CPCAudioConfig()
    new = apply_overrides(cfg, dict(parse_override(o) for o in ["lr=3e-4", "max_steps=7", "streaming=true",
                                                               "label_column=speaker_id", "eval_split=none"]))
    assert (new.lr, new.max_steps, new.streaming, new.label_column, new.eval_split) == (3e-4, 7, True, "speaker_id", None)
    assert cfg.lr == 2e-4  # the original is untouched (frozen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    for bad, match in [("lr=abc", "lr: expected a number"), ("max_steps=1.5", "max_steps: expected an integer"),
                       ("streaming=maybe", "expected true or false"), ("nosuch=1", "unknown config key 'nosuch'")]:
        with pytest.raises(ConfigError, match=match):
            apply_overrides(cfg, dict([parse_override(bad)]))
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("justakey")


def test_conv_encoder_gives_one_frame_per_10ms():
    enc = ENCODERS.build("cpc_conv", channels=8)
    assert enc.forward_features(torch.randn(3, 16000)).shape == (3, 100, 8)
    assert enc.forward_features(torch.randn(1, 1, 3200)).shape == (1, 20, 8)


@pytest.mark.parametrize("context", ["gru", "causal_transformer"])
def test_context_networks_are_causal(context):
    enc = build_encoder({"name": "sequence", "kwargs": {"frames": {"name": "cpc_conv", "kwargs": {"channels": 8}},
                                                        "context": {"name": context, "kwargs": {"dim": 8}}}})
    z = torch.randn(2, 30, 8)
    z2 = z.clone()
    z2[:, 20:] = torch.randn(2, 10, 8)  # change the future only
    c, c2 = enc.forward_context(z), enc.forward_context(z2)
    torch.testing.assert_close(c[:, :20], c2[:, :20])
    assert not torch.allclose(c[:, 20:], c2[:, 20:])


def test_encoder_save_and_load_roundtrip(tmp_path):
    spec = {"name": "sequence", "kwargs": {"frames": {"name": "cpc_conv", "kwargs": {"channels": 8}},
                                           "context": {"name": "gru", "kwargs": {"dim": 6}}}}
    enc = build_encoder(spec).eval()
    save_encoder(enc, tmp_path / "run" / "encoder", task="cpc_audio", modality="audio")
    loaded = load_encoder(tmp_path / "run")
    x = torch.randn(2, 1600)
    torch.testing.assert_close(loaded.forward_features(x), enc.forward_features(x))
    assert loaded.meta["task"] == "cpc_audio" and loaded.embed_dim == 6
    fresh = load_encoder(tmp_path / "run", pretrained=False)
    assert not torch.allclose(fresh.forward_features(x), enc.forward_features(x))


def test_every_task_trains_a_few_steps_with_a_gradient_everywhere(tmp_path):
    from mmssl.run import resolve_config

    shipped = {n for n in TASKS.names() if TASKS.get(n).__module__.startswith("mmssl.tasks.")}
    assert {n.split("/")[0] for n in SMOKE} == shipped, "add new tasks to SMOKE"
    for key, overrides in SMOKE.items():
        name = key.split("/")[0]
        task, cfg = resolve_config(name, None, {"output_dir": str(tmp_path / key)},
                                   [f"{k}={v}" for k, v in overrides.items()])
        torch.manual_seed(0)
        objective = task.build_objective(cfg)
        assert isinstance(objective, Objective), name
        opt = torch.optim.AdamW(objective.parameters(), lr=1e-3)
        batches = iter(task.train_loader(cfg, 0, 1, 0))
        for step in range(3):
            with host_reads() as reads:  # after the first step, a training step reads nothing back to the host
                task.before_step(cfg, objective, step)  # as the trainer does (DeepCluster clusters at step 0)
                opt.zero_grad()
                with torch.no_grad():  # as the trainer does: views made on the batch, then the step
                    batch = task.on_device(cfg, next(batches))
                out = objective(batch)
                assert torch.isfinite(out["loss"]), (name, step)
                assert all(metric_name_ok(objective, k) for k in out), (name, sorted(out))
                out["loss"].backward()
                missing = [n for n, p in objective.named_parameters() if p.requires_grad and
                           (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
                assert not missing, (name, missing)
                opt.step()
                objective.after_step(step + 1, 3)
            assert step == 0 or not reads, (name, reads)
