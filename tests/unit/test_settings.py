"""Objective settings: each objective's own dataclass, nested in task configs as ``objective``, and
the config machinery that reaches into it (dotted overrides, YAML mappings, saving and resuming)."""
import dataclasses
import inspect

import pytest
import yaml
from recipes import CONFIGS, readings_under_other_defaults

import mmssl.tasks  # noqa: F401  (registers every task)
from mmssl import config as config_lib
from mmssl.config import ConfigError, apply_overrides, parse_override
from mmssl.objectives.cpc import CPCSettings
from mmssl.objectives.simclr import SimCLRSettings
from mmssl.registry import OBJECTIVES, TASKS
from mmssl.run import resolve_config

# Constructor arguments that are not settings: the encoder, and what a task supplies itself.
# global_crops: from the views; image_size: the task's crop size; num_images: the training set's size;
# steps_per_epoch, seed: DeepCluster's, from the data and the run
NOT_SETTINGS = {"encoder", "masking", "quantizer", "global_crops", "image_size", "num_images", "steps_per_epoch", "seed"}


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_constructor_takes_exactly_the_settings_fields_with_their_defaults(name):
    cls = OBJECTIVES.get(name)
    settings = cls.Settings()
    assert dataclasses.is_dataclass(settings) and type(settings).__dataclass_params__.frozen
    params = {p.name: p for p in list(inspect.signature(cls).parameters.values()) if p.name not in NOT_SETTINGS}
    fields = dataclasses.asdict(settings)
    assert set(params) == set(fields), name
    for key, value in fields.items():
        assert params[key].kind is inspect.Parameter.KEYWORD_ONLY, (name, key)
        assert params[key].default == value, (name, key)


def test_every_task_config_nests_its_objectives_settings():
    for name in TASKS.names():
        task = TASKS.get(name)()
        assert task.objective in OBJECTIVES, (name, task.objective)
        cfg = task.default_config()
        assert isinstance(cfg.objective, OBJECTIVES.get(task.objective).Settings), name


def test_the_paper_defaults():
    assert dataclasses.asdict(SimCLRSettings()) == {"proj_hidden": 2048, "proj_dim": 128, "temperature": 0.1,
                                                    "projector_bn": True}
    moco = OBJECTIVES.get("moco").Settings()
    assert (moco.queue_size, moco.momentum, moco.temperature) == (65536, 0.999, 0.2)
    swav = OBJECTIVES.get("swav").Settings()
    assert (swav.num_prototypes, swav.eps, swav.sinkhorn_iters, swav.temperature) == (3000, 0.05, 3, 0.1)
    mae = OBJECTIVES.get("mae").Settings()
    assert (mae.mask_ratio, mae.decoder_dim, mae.decoder_depth, mae.decoder_heads, mae.norm_pix_loss,
            mae.loss_on_visible) == (0.75, 512, 8, 16, True, False)
    assert CPCSettings().steps == 12
    ce = OBJECTIVES.get("context_encoder").Settings()
    assert (ce.mask, ce.mask_area, ce.overlap, ce.overlap_weight) == ("center", 0.25, 4, 10.0)


def test_dotted_override_changes_one_nested_field():
    cfg = TASKS.get("simclr_image")().default_config()
    new = apply_overrides(cfg, dict(parse_override(o) for o in ["objective.temperature=0.3", "lr=0.1"]))
    assert new.objective == dataclasses.replace(cfg.objective, temperature=0.3) and new.lr == 0.1
    assert cfg.objective.temperature == 0.2  # the demo's value, untouched
    cpc = apply_overrides(TASKS.get("cpc_audio")().default_config(), {"objective.temperature": "none"})
    assert cpc.objective.temperature is None


def test_yaml_mapping_overrides_only_the_fields_it_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: moco_image\nobjective:\n  queue_size: 256\n  symmetric: false\nmax_steps: 5\n")
    _, cfg = resolve_config("moco_image", str(recipe), {}, [])
    demo = TASKS.get("moco_image")().default_config().objective
    assert cfg.objective == dataclasses.replace(demo, queue_size=256, symmetric=False)
    # the command line applies after the recipe, field by field
    _, cfg = resolve_config("moco_image", str(recipe), {}, ["objective.temperature=0.5"])
    assert (cfg.objective.queue_size, cfg.objective.temperature) == (256, 0.5)
    # a whole section as YAML text on the command line
    _, cfg = resolve_config("moco_image", None, {}, ["objective={queue_size: 128}"])
    assert cfg.objective == dataclasses.replace(demo, queue_size=128)


@pytest.mark.parametrize("override, match", [
    ("objective.nosuch=1", r"unknown config key 'objective\.nosuch' for SwAVSettings"),
    ("objective.epsilon=0.1", r"unknown config key 'objective\.epsilon' .*did you mean eps"),
    ("objective.num_prototypes=1.5", r"objective\.num_prototypes: expected an integer"),
    ("objective.temperature=warm", r"objective\.temperature: expected a number"),
    ("objective.projector_bn=maybe", r"objective\.projector_bn: expected true or false"),
    ("objective.eps.x=1", r"unknown config key 'objective\.eps\.x'"),
    ("objective=3", r"objective: expected a mapping of SwAVSettings fields"),
])
def test_bad_nested_overrides_name_the_dotted_path(override, match):
    cfg = TASKS.get("swav_image")().default_config()
    with pytest.raises(ConfigError, match=match):
        apply_overrides(cfg, dict([parse_override(override)]))


def test_a_setting_the_objective_refuses_is_one_config_error_before_training(tmp_path):
    task, cfg = resolve_config("simclr_image", None, {"output_dir": str(tmp_path)}, ["objective.temperature=0"])
    with pytest.raises(ConfigError, match=r"^objective \(simclr\): temperature must be positive, not 0.0$"):
        task.build_objective(cfg)
    task, cfg = resolve_config("tcn_video", None, {"output_dir": str(tmp_path)}, ["objective.loss=hinge"])
    with pytest.raises(ConfigError, match="loss must be one of triplet, npairs, not 'hinge'"):
        task.build_objective(cfg)


def test_saved_config_round_trips_and_resume_sees_a_changed_nested_field(tmp_path):
    task, cfg = resolve_config("swav_image", None, {"output_dir": str(tmp_path)}, ["objective.num_prototypes=12"])
    path = tmp_path / "config.yaml"
    config_lib.save(cfg, path)
    saved = yaml.safe_load(path.read_text())
    assert saved["objective"]["num_prototypes"] == 12 and saved["objective"]["eps"] == 0.05
    assert apply_overrides(task.default_config(), saved) == cfg
    assert config_lib.differences(saved, cfg) == []
    changed = apply_overrides(cfg, {"objective.eps": 0.1, "log_every": 3})  # log_every may change on resume
    assert config_lib.differences(saved, changed) == ["objective.eps: 0.05 -> 0.1"]
    assert "  objective.num_prototypes: 12" in config_lib.describe(cfg).splitlines()


def test_resuming_with_another_objective_setting_is_refused(tmp_path):
    from tiny_tasks import tiny_config

    from mmssl.trainer import train

    task, cfg = tiny_config(tmp_path / "run", max_steps=2, save_every=2)
    train(task, cfg)
    other = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, num_negatives=4))
    with pytest.raises(ConfigError, match=r"another config \(objective\.num_negatives: 8 -> 4\)"):
        train(task, other)


def test_a_changed_config_is_refused_before_the_objective_is_built(tmp_path, monkeypatch):
    from tiny_tasks import tiny_config

    from mmssl.trainer import train

    task, cfg = tiny_config(tmp_path / "run", max_steps=2, save_every=2)
    train(task, cfg)
    built = []
    monkeypatch.setattr(type(task), "build_objective", lambda self, c: built.append(c) or 1 / 0)
    other = dataclasses.replace(cfg, lr=cfg.lr / 2)
    with pytest.raises(ConfigError, match=r"another config \(lr: "):
        train(task, other)
    assert built == []


def test_a_home_relative_output_dir_is_expanded_wherever_it_is_set(tmp_path, monkeypatch):
    # No shell expands "~" in a recipe, so the config does: checks, trainer and evaluation then see one folder.
    monkeypatch.setenv("HOME", str(tmp_path))
    _, cfg = resolve_config("simclr_image", None, {}, ["output_dir=~/runs/a"])
    assert cfg.output_dir == str(tmp_path / "runs" / "a")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: simclr_image\noutput_dir: ~/runs/b\n")
    _, cfg = resolve_config("simclr_image", str(recipe), {}, [])
    assert cfg.output_dir == str(tmp_path / "runs" / "b")


# --- encoder settings: the nested ``encoder`` section -----------------------------------------------

def _encoder_settings():
    from mmssl.encoders.context import CPCEncoderSettings, GRUContext
    from mmssl.encoders.convnet import ConvNet, ConvNetSettings
    from mmssl.encoders.dense import DenseConvNet, DenseConvNetSettings
    from mmssl.encoders.resnet import ResNet, ResNetSettings
    from mmssl.encoders.vit import ViT, ViTSettings
    from mmssl.encoders.waveform import WaveformConvEncoder

    def defaults(cls, rename=None):
        rename = rename or {}
        return {rename.get(k, k): p.default for k, p in inspect.signature(cls).parameters.items()}

    # (settings class, the constructor defaults its fields mirror, as the settings name them)
    return [(ConvNetSettings, defaults(ConvNet)), (DenseConvNetSettings, defaults(DenseConvNet)),
            (ResNetSettings, defaults(ResNet)), (ViTSettings, defaults(ViT)),
            (CPCEncoderSettings, {**defaults(WaveformConvEncoder),
                                  **defaults(GRUContext, {"dim": "context_dim", "layers": "context_layers"})})]


@pytest.mark.parametrize("settings, defaults", _encoder_settings(), ids=lambda v: getattr(v, "__name__", ""))
def test_encoder_settings_default_to_their_encoders_defaults(settings, defaults):
    assert type(settings()).__dataclass_params__.frozen
    # ResNet's channels_last: None in the settings is "where CUDA is available", resolved by spec()
    shared = [f for f in dataclasses.fields(settings) if f.name in defaults and f.name != "channels_last"]
    assert shared, settings
    for f in shared:
        want = defaults[f.name]
        if f.name == "patch":  # the settings give one size for every axis
            want = sorted(set(want))
        assert (list(f.default) if isinstance(f.default, tuple) else f.default) == (
            list(want) if isinstance(want, tuple) else want), (settings.__name__, f.name)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_offers_its_encoders_in_one_section_and_each_builds_a_spec(name):
    from mmssl.tasks.sections import EncoderSection

    task = TASKS.get(name)()
    cfg = task.default_config()
    assert isinstance(cfg.encoder, EncoderSection), name
    offered = cfg.encoder.offered()  # the sub-sections: fields holding settings, not options such as sobel
    assert offered and all(dataclasses.is_dataclass(getattr(cfg.encoder, choice)) for choice in offered)
    assert cfg.encoder.name in offered
    for choice in offered:  # every sub-section is reachable by its dotted key and builds a spec
        spec = task.encoder_spec(apply_overrides(cfg, {"encoder.name": choice}))
        assert set(spec) == {"name", "kwargs"}, (name, choice)
    with pytest.raises(ConfigError, match=f"encoder.name must be .* for {name}, not 'nosuch'"):
        task.encoder_spec(apply_overrides(cfg, {"encoder.name": "nosuch"}))


def test_encoder_settings_nest_in_overrides_and_yaml(tmp_path):
    _, cfg = resolve_config("simclr_image", None, {}, ["encoder.name=vit", "encoder.vit.dim=32", "encoder.vit.patch=8",
                                                       "encoder.convnet.widths=8,16"])
    assert (cfg.encoder.name, cfg.encoder.vit.dim, cfg.encoder.vit.patch, cfg.encoder.convnet.widths) == (
        "vit", 32, (8,), (8, 16))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: simclr_image\nencoder:\n  name: vit\n  vit: {dim: 32, patch: 8}\n"
                      "  convnet: {widths: [8, 16]}\n")
    assert resolve_config("simclr_image", str(recipe), {}, [])[1] == cfg
    task, video = resolve_config("mae_video", None, {}, ["encoder.vit.patch=2,4,4", "encoder.vit.size=small",
                                                         "encoder.vit.dim=none"])
    kwargs = task.encoder_spec(video)["kwargs"]
    assert (kwargs["patch"], kwargs["size"], kwargs["dim"], kwargs["depth"]) == ([2, 4, 4], "small", None, 4)
    for bad, match in [("encoder.vit.patch=4,4", "encoder.vit.patch must be one positive size or 3"),
                       ("encoder.vit.size=huge", "encoder.vit.size must be one of tiny, small, base")]:
        with pytest.raises(ConfigError, match=match):
            resolve_config("mae_video", None, {}, [bad])


def test_encoder_sobel_is_an_option_of_the_image_encoders_not_an_encoder(tmp_path):
    assert resolve_config("deepcluster_image", None, {}, [])[1].encoder.sobel  # DeepCluster's paper input
    _, cfg = resolve_config("simclr_image", None, {}, ["encoder.sobel=true", "encoder.name=resnet"])
    assert cfg.encoder.sobel and cfg.encoder.name == "resnet" and not TASKS.get("simclr_image")().default_config(
        ).encoder.sobel
    assert not resolve_config("deepcluster_image", None, {}, ["encoder.sobel=false"])[1].encoder.sobel
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: deepcluster_image\nencoder:\n  sobel: false\n  convnet: {widths: [8, 16]}\n")
    _, cfg = resolve_config("deepcluster_image", str(recipe), {}, [])
    assert (cfg.encoder.sobel, cfg.encoder.convnet.widths) == (False, (8, 16))
    assert cfg.encoder.offered() == ["convnet", "vit", "resnet"]
    with pytest.raises(ConfigError, match=r"encoder\.sobel: expected true or false"):
        resolve_config("deepcluster_image", None, {}, ["encoder.sobel=maybe"])
    with pytest.raises(ConfigError, match="encoder.name must be convnet, vit or resnet for deepcluster_image, not 'sobel'"):
        resolve_config("deepcluster_image", None, {}, ["encoder.name=sobel"])


@pytest.mark.parametrize("name", TASKS.names())
def test_every_renamed_key_fails_with_one_line_naming_its_new_key(name, tmp_path):
    task = TASKS.get(name)()
    cfg = task.default_config()
    assert type(cfg).renamed, f"{name}: no table of the encoder keys that moved"
    for old, new in type(cfg).renamed.items():
        assert old not in {f.name for f in dataclasses.fields(cfg)}, (name, old)
        with pytest.raises(ConfigError) as e:
            resolve_config(name, None, {}, [f"{old}=1"])
        assert str(e.value) == f"config key '{old}' is now {new}"
        recipe = tmp_path / f"{old}.yaml"
        recipe.write_text(yaml.safe_dump({"task": name, old: 1}))
        with pytest.raises(ConfigError, match=f"config key '{old}' is now"):
            resolve_config(name, str(recipe), {}, [])
        # the key it names exists in this task's config
        key, value = new.split(" (")[0], cfg
        for part in key.split("."):
            value = getattr(value, part)
        assert apply_overrides(cfg, {key: value}) == cfg, (name, old, key)


def test_resuming_a_run_saved_with_the_old_flat_encoder_keys_is_refused(tmp_path):
    from tiny_tasks import tiny_config

    from mmssl.trainer import train

    task, cfg = tiny_config(tmp_path / "run", max_steps=2, save_every=2)
    train(task, cfg)
    path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    cpc = saved.pop("encoder")["cpc"]  # the config as written before the encoder section existed
    saved.update(channels=cpc["channels"], context=cpc["context"], context_dim=cpc["context_dim"],
                 context_layers=cpc["context_layers"])
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"keys that have since moved \(channels -> encoder\.cpc\.channels, context "
                                          r"-> encoder\.cpc\.context, context_dim -> encoder\.cpc\.context_dim, \.\.\.\): "
                                          r"resume it with the mmssl version that started it, or use a new --output-dir"):
        train(task, cfg)


def test_simclr_audio_views_are_a_nested_section_that_reaches_the_crops():
    import torch

    task, cfg = resolve_config("simclr_audio", None, {}, ["views.gain_db=2", "views.min_snr_db=30",
                                                          "views.max_snr_db=35", "views.time_masks=3"])
    item = task.make_item(cfg)({"audio": torch.randn(16000).numpy()}, torch.Generator().manual_seed(0))
    assert item["gain_db"].abs().max() <= 2 and ((30 <= item["snr_db"]) & (item["snr_db"] <= 35)).all()
    assert item["mask_start"].shape == (2, 3)  # two crops, three masks each
    for bad, match in [("views.gain_db=-1", "views.gain_db must be >= 0"),
                       ("views.min_snr_db=50", "need min_snr_db <= max_snr_db"),
                       ("views.max_mask=1", r"views.max_mask is a share of the crop in \[0, 1\)"),
                       ("views.time_masks=-2", "views.time_masks must be >= 0")]:
        with pytest.raises(ConfigError, match=match):
            resolve_config("simclr_audio", None, {}, [bad])


RECIPES = sorted(CONFIGS.glob("*.yaml"))
# The optimisation settings whose shared defaults are the demos' choices, not a paper's (the demos clip
# gradients at norm 1 and end their cosine at 1% of the rate; most papers' code does neither). Two sets of
# demo defaults, unlike each other in every setting, so that each recipe's value differs from one of them.
OTHER_DEFAULTS = ({"max_steps": 7, "batch_size": 3, "lr": 0.123, "min_lr_ratio": 0.5, "warmup_steps": 3,
                   "weight_decay": 0.321, "optimizer": "sgd", "clip_grad": 7.5},
                  {"max_steps": 9, "batch_size": 5, "lr": 0.456, "min_lr_ratio": 0.25, "warmup_steps": 4,
                   "weight_decay": 0.654, "optimizer": "lars", "clip_grad": 2.5})


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_a_recipe_states_its_optimisation(recipe, monkeypatch):
    """A recipe overrides the task's demo config key by key: what it leaves unsaid comes from the demo,
    so each recipe states its schedule, rate, decay, optimizer and clipping, and a change to a demo's
    defaults cannot move a paper's recipe."""
    first, *others = readings_under_other_defaults(
        recipe, monkeypatch, OTHER_DEFAULTS, lambda cfg: {k: getattr(cfg, k) for k in OTHER_DEFAULTS[0]})
    assert others == [first] * len(OTHER_DEFAULTS)
