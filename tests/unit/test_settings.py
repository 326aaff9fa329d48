"""Objective settings: each objective's own dataclass, nested in task configs as ``objective``, and
the config machinery that reaches into it (dotted overrides, YAML mappings, saving and resuming)."""
import dataclasses
import inspect

import pytest
import yaml

import mmssl.tasks  # noqa: F401  (registers every task)
from mmssl import config as config_lib
from mmssl.config import ConfigError, apply_overrides, parse_override
from mmssl.objectives.cpc import CPCSettings
from mmssl.objectives.simclr import SimCLRSettings
from mmssl.registry import OBJECTIVES, TASKS
from mmssl.run import resolve_config

# Constructor arguments that are not settings: the encoder, and what a task supplies itself.
NOT_SETTINGS = {"encoder", "masking", "quantizer", "global_crops"}  # global_crops: from the views


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
    assert (mae.mask_ratio, mae.decoder_dim, mae.decoder_depth, mae.decoder_heads, mae.norm_pix_loss) == \
        (0.75, 512, 8, 16, True)
    assert CPCSettings().steps == 12


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
