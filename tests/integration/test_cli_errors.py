"""Bad input ends in one ``error:`` line on stderr (no traceback) and a non-zero exit.

Each case runs a real entry point (``train.py`` or ``python -m mmssl``) in a
subprocess, offline, with every file it reads generated under a temporary folder.
Every subprocess pays for importing torch, so the module starts all cases at once
(a few at a time, see ``cli``) and each test waits for its own.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

# Flags that make a run tiny, for the cases that would otherwise start training.
TINY = ["--max-steps", "1", "batch_size=2", "num_workers=0", "evaluate=false", "encoder.cpc.channels=8", "encoder.cpc.context_dim=8",
        "crop_samples=3200", "objective.steps=2", "objective.num_negatives=4"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        MMSSL_CACHE=str(tmp_path / "mmssl_cache"),
        # datasets draws "Generating train split" bars on stderr while it indexes a folder;
        # they are progress, not part of the error, and would blur "exactly one line".
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        # several cases run at once on a small machine: one thread each avoids oversubscription
        OMP_NUM_THREADS="1",
    )
    return env


def run(tmp_path: Path, *args: str, module: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mmssl", *args] if module else [sys.executable, "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout,
                          check=False)


def assert_one_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit; stderr is exactly one non-empty line, ``error: ...``, naming every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    context = f"exit {result.returncode}\n--- stderr ---\n{result.stderr}\n--- stdout (tail) ---\n{result.stdout[-2000:]}"
    assert result.returncode != 0, context
    assert "Traceback" not in result.stderr, context
    assert len(lines) == 1, context
    line = lines[0]
    assert line.startswith("error:"), context
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def _write_wav(path: Path, seconds: float = 0.5, f0: float = 220.0, seed: int = 0) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    noise = np.random.default_rng(seed).standard_normal(len(t))
    sf.write(path, (0.5 * np.sin(2 * np.pi * f0 * t) + 0.05 * noise).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def audiofolder(tmp_path_factory) -> Path:
    """A clean audiofolder: train/ and test/ with two speaker subfolders (a ``label`` column)."""
    root = tmp_path_factory.mktemp("audiofolder")
    for split, n in (("train", 2), ("test", 1)):
        for s, f0 in enumerate((200.0, 500.0)):
            for k in range(n):
                _write_wav(root / split / f"spk{s}" / f"u{k}.wav", f0=f0, seed=10 * s + k)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A run directory holding a tiny, untrained cpc_audio encoder."""
    from mmssl.encoders.context import CPCEncoderSettings
    from mmssl.encoders.io import build_encoder, save_encoder
    from mmssl.tasks.cpc_audio import CPCAudio
    from mmssl.tasks.sections import AudioEncoders

    task = CPCAudio()
    cfg = dataclasses.replace(task.default_config(), encoder=AudioEncoders(cpc=CPCEncoderSettings(channels=8, context_dim=8)))
    run_dir = tmp_path_factory.mktemp("run")
    save_encoder(build_encoder(task.encoder_spec(cfg)), run_dir / "encoder", task="cpc_audio", modality="audio")
    return run_dir


def _cases(work: Path, audiofolder: Path, checkpoint: Path) -> dict[str, tuple[list[str], bool]]:
    """name -> (arguments, run as ``python -m mmssl`` rather than ``train.py``); files made under ``work``."""
    import soundfile as sf

    (work / "bad.yaml").write_text("lr: 0.001\nnosuchkey: 3\n")
    (work / "other.yaml").write_text("task: some_other_task\nlr: 0.001\n")
    (work / "flat_encoder.yaml").write_text("task: simclr_image\nbackbone: resnet18\nsmall_stem: true\n")
    unreadable = work / "unreadable_audio"
    (unreadable / "train" / "a").mkdir(parents=True)
    (unreadable / "train" / "b").mkdir(parents=True)
    (unreadable / "train" / "a" / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(700))
    sf.write(unreadable / "train" / "b" / "silent_empty.wav", np.zeros(0, np.float32), 16000)

    from PIL import Image

    images, bad_images = work / "images", work / "bad_images"
    for k, cls in enumerate(("disk", "square")):
        (images / "train" / cls).mkdir(parents=True)
        (bad_images / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 20), (40 * k, 200, 90)).save(images / "train" / cls / f"{i}.png")
            (bad_images / "train" / cls / f"broken{i}.png").write_bytes(np.random.default_rng(i).bytes(300))
    tiny_image = ["--max-steps", "1", "batch_size=2", "num_workers=0", "evaluate=false", "encoder.vit.dim=16",
                  "encoder.vit.depth=1", "encoder.vit.heads=2", "image_size=16", "objective.proj_hidden=8", "objective.proj_dim=8"]

    def out(name: str) -> list[str]:
        return ["--output-dir", str(work / name)]

    return {
        "tasks": (["tasks"], True),
        "unknown_task": (["--task", "no_such_task"], False),
        "unknown_task_module": (["train", "--task", "no_such_task"], True),
        "unknown_key": (["--task", "cpc_audio", "nosuchkey=1"], False),
        "lr_abc": (["--task", "cpc_audio", "lr=abc"], False),
        "max_steps_float": (["--task", "cpc_audio", "max_steps=1.5"], False),
        "recipe_unknown_key": (["--task", "cpc_audio", "--config", str(work / "bad.yaml"), *out("r1"), *TINY], False),
        "recipe_other_task": (["--task", "cpc_audio", "--config", str(work / "other.yaml"), *out("r2"), *TINY], False),
        "flat_encoder_key": (["--task", "cpc_audio", "context_dim=8"], False),
        "recipe_flat_encoder_key": (["--task", "simclr_image", "--config", str(work / "flat_encoder.yaml")], False),
        "unknown_encoder": (["--task", "simclr_image", "encoder.name=resnet18"], False),
        "missing_path": (["--task", "cpc_audio", "--dataset", "./does/not/exist", *out("r4"), *TINY], False),
        "hub_offline": (["--task", "cpc_audio", "--dataset", "someone/some-dataset", *out("r5"), *TINY], False),
        "no_audio_column": (["--task", "cpc_audio", "--dataset", str(audiofolder), *out("r6"), *TINY,
                             "audio_column=wav"], False),
        "only_unreadable": (["--task", "cpc_audio", "--dataset", str(unreadable), *out("r7"), *TINY], False),
        "no_image_column": (["--task", "simclr_image", "--dataset", str(images), "--image-column", "picture",
                             *out("r8"), *tiny_image], False),
        "only_unreadable_images": (["--task", "simclr_image", "--dataset", str(bad_images), *out("r9"), *tiny_image],
                                   False),
        "supcon_without_labels": (["--task", "supcon_image", "--dataset", str(images), *out("r10"), *tiny_image],
                                  False),
        "no_label_column": (["probe", "--checkpoint", str(checkpoint), "--dataset", str(audiofolder),
                             "--label-column", "speaker_id"], True),
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory, audiofolder, checkpoint) -> dict[str, Future]:
    """Every case, started at once on a small pool; ``cli[name].result()`` waits for that one."""
    work = tmp_path_factory.mktemp("cli")
    cases = _cases(work, audiofolder, checkpoint)
    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))
    futures = {}
    for name, (args, module) in cases.items():
        home = work / "env" / name
        home.mkdir(parents=True)
        futures[name] = pool.submit(run, home, *args, module=module)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


# --- the registry and overrides ------------------------------------------------------------------


def test_tasks_lists_cpc_audio(cli):
    result = cli["tasks"].result()
    assert result.returncode == 0, result.stderr
    assert "cpc_audio" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["unknown_task", "unknown_task_module"], ids=["train.py", "python -m mmssl train"])
def test_unknown_task_lists_known_tasks(cli, case):
    line = assert_one_error(cli[case].result(), "no_such_task", "cpc_audio")
    assert "known" in line


def test_unknown_override_key(cli):
    assert_one_error(cli["unknown_key"].result(), "nosuchkey", "unknown")


@pytest.mark.parametrize(
    "case, needles",
    [("lr_abc", ("lr", "number", "abc")), ("max_steps_float", ("max_steps", "integer", "1.5"))],
)
def test_override_of_the_wrong_type(cli, case, needles):
    assert_one_error(cli[case].result(), *needles)


def test_recipe_with_an_unknown_key(cli):
    assert_one_error(cli["recipe_unknown_key"].result(), "nosuchkey")


@pytest.mark.parametrize("case, needles", [
    ("flat_encoder_key", ("config key 'context_dim' is now encoder.cpc.context_dim",)),
    ("recipe_flat_encoder_key", ("config key 'backbone' is now encoder.name", "encoder.resnet.arch")),
    ("unknown_encoder", ("encoder.name must be convnet, vit or resnet for simclr_image, not 'resnet18'",)),
])
def test_encoder_keys_that_moved_or_do_not_exist(cli, case, needles):
    assert_one_error(cli[case].result(), *needles)


def test_recipe_for_another_task(cli):
    assert_one_error(cli["recipe_other_task"].result(), "other.yaml", "some_other_task", "cpc_audio")


# --- data ----------------------------------------------------------------------------------------


def test_missing_local_path(cli):
    assert_one_error(cli["missing_path"].result(), "./does/not/exist")


def test_hub_id_while_offline(cli):
    line = assert_one_error(cli["hub_offline"].result(), "someone/some-dataset", "offline", "--dataset")
    assert "local" in line.lower()  # suggests a local folder instead


def test_missing_audio_column_names_the_columns(cli):
    assert_one_error(cli["no_audio_column"].result(), "'wav'", "columns: audio, label")


@pytest.mark.slow
def test_missing_label_column_names_the_columns(cli):
    assert_one_error(cli["no_label_column"].result(), "'speaker_id'", "--label-column", "columns: audio, label")


def test_missing_image_column_names_the_columns(cli):
    assert_one_error(cli["no_image_column"].result(), "picture", "image", "label")


def test_supcon_refuses_a_dataset_without_a_label_column(cli):
    assert_one_error(cli["supcon_without_labels"].result(), "supcon_image", "--label-column")


def test_only_unreadable_images_names_the_files(cli):
    assert_one_error(cli["only_unreadable_images"].result(), "broken0.png")


def test_only_unreadable_audio_names_the_files(cli):
    """Nothing left to train on (random bytes, an empty WAV): one line that counts and names them."""
    assert_one_error(cli["only_unreadable"].result(), "garbage.wav", "silent_empty.wav", "2 audio files")


# --- more bad input, checked in this process (the same main() the entry points call) --------------


@pytest.fixture
def in_process(capsys, tmp_path, monkeypatch):
    """``in_process(argv, module=False)`` -> CompletedProcess of ``train.py argv`` / ``python -m mmssl argv``."""
    import datasets

    from mmssl import cli as cli_module

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path / "mmssl_cache"))
    bars = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()

    def call(argv: list[str], module: bool = False) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = cli_module.main(argv) if module else cli_module.train_main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    yield call
    if not bars:
        datasets.enable_progress_bars()


def test_flag_of_the_wrong_type(in_process):
    """argparse's own errors are one line too, not a usage block."""
    assert_one_error(in_process(["--task", "cpc_audio", "--max-steps", "abc"]), "--max-steps", "int", "abc")
    assert_one_error(in_process(["probe"], module=True), "--checkpoint")
    assert_one_error(in_process(["no_such_command"], module=True), "no_such_command")


def test_overrides_may_come_between_and_after_options(in_process):
    """``key=value`` after an option is an override like any other (plain ``parse_args`` rejects it
    as an unrecognised argument once overrides also precede that option)."""
    result = in_process(["--task", "cpc_audio", "batch_size=2", "--max-steps", "1", "nosuchkey=1"])
    assert_one_error(result, "unknown config key", "nosuchkey")


def test_missing_recipe_file(in_process):
    assert_one_error(in_process(["--task", "cpc_audio", "--config", "no/such/recipe.yaml"]), "no/such/recipe.yaml")


def test_probe_without_labels_asks_for_a_label_column(in_process, checkpoint, tmp_path):
    for k in range(3):  # a flat folder: no class subfolders, so no label column to guess
        _write_wav(tmp_path / "flat" / f"u{k}.wav", seed=k)
    result = in_process(["probe", "--checkpoint", str(checkpoint), "--dataset", str(tmp_path / "flat")], module=True)
    assert_one_error(result, "--label-column")


def test_probe_readout_is_for_image_tasks(in_process, audiofolder, checkpoint):
    result = in_process(["probe", "--checkpoint", str(checkpoint), "--dataset", str(audiofolder), "--label-column",
                         "label", "--readout", "tokens"], module=True)
    assert_one_error(result, "--readout applies to image tasks", "cpc_audio")


def test_probe_of_a_missing_checkpoint(in_process, audiofolder, tmp_path):
    missing = tmp_path / "no_run_here"
    result = in_process(["probe", "--checkpoint", str(missing), "--dataset", str(audiofolder), "--label-column", "label"],
                        module=True)
    assert_one_error(result, str(missing))


def test_dataset_that_is_a_file(in_process, audiofolder, tmp_path):
    wav = audiofolder / "train" / "spk0" / "u0.wav"
    result = in_process(["--task", "cpc_audio", "--dataset", str(wav), "--output-dir", str(tmp_path / "out"), *TINY])
    assert_one_error(result, str(wav), "folder")


def test_unknown_optimizer_before_anything_is_written(in_process, tmp_path):
    out = tmp_path / "run"
    result = in_process(["--task", "cpc_audio", "--output-dir", str(out), "optimizer=adam"])
    assert_one_error(result, "optimizer must be one of adamw, sgd, lars", "adam")
    assert not out.exists()


def test_a_setting_the_objective_refuses_is_the_runs_only_line(in_process, tmp_path):
    """Refused when the objective is built: one error line, no config echo before it, nothing written."""
    out = tmp_path / "run"
    result = in_process(["--task", "simclr_image", "--output-dir", str(out), "--max-steps", "1", "batch_size=2",
                         "num_workers=0", "objective.temperature=0"])
    assert_one_error(result, "objective (simclr): temperature must be positive")
    assert "task simclr_image" not in result.stdout and "config:" not in result.stdout, result.stdout
    assert not out.exists()
