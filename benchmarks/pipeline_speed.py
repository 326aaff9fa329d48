"""End-to-end training images/s of ``train.py`` at HEAD against the same command at an earlier commit,
measured in one run, one job at a time, alternating so that drifts in the machine's load hit both.

The default reference is the last commit whose image tasks made their views per item in the
DataLoader workers (torchvision transforms on each image, before views were made on whole
batches), so the printed ratio is the end-to-end speed-up of the training path that a user runs:

    python benchmarks/pipeline_speed.py [--task simclr_image] [--ref e80f98e^] [--steps 80] [--rounds 2]

Each run trains ``--steps`` steps on the embedded data with the task's defaults, no monitor and
no evaluation, and reads images/s from its ``metrics.jsonl`` (``samples`` and ``wall_s`` of the
logged rows, the first row left out because it waits for the workers to start). The reference
runs from a temporary git worktree of ``--ref``, installed (editable, no dependencies) into a
temporary environment that sees this environment's packages.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reference_python(tree: Path, tmp: Path) -> str:
    """A Python for ``tree``: a venv whose site-packages also read this one's (a .pth line), with ``tree``
    installed editable, so ``mmssl`` and its mapped packages (tasks, modalities) come from ``tree``."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    # A folder added by a .pth line has its own .pth files skipped, so this checkout's editable
    # install does not shadow the reference's.
    (Path(site) / "_base_env.pth").write_text(ours + "\n")
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(tree)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: installing {tree} for the reference failed:\n{done.stderr[-2000:]}")
    return python


def images_per_s(python: str, code: Path, task: str, steps: int, out: Path, extra: list[str]) -> float:
    every = max(1, steps // 8)
    cmd = [python, "train.py", "--task", task, "--output-dir", str(out), f"max_steps={steps}",
           "evaluate=false", "monitor_every=0", f"log_every={every}", f"save_every={steps}", *extra]
    done = subprocess.run(cmd, cwd=code, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} in {code} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    if len(rows) < 3:
        raise SystemExit(f"error: {out}/metrics.jsonl has {len(rows)} loss rows; raise --steps")
    first, last = rows[1], rows[-1]
    return (last["samples"] - first["samples"]) / (last["wall_s"] - first["wall_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="simclr_image")
    p.add_argument("--ref", default="e80f98e^", help="the reference commit (default: the last per-item views)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="key=value for both runs (e.g. num_workers=2)")
    args = p.parse_args()
    ref = subprocess.run(["git", "rev-parse", "--short", args.ref], cwd=ROOT, capture_output=True, text=True, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    if ref.returncode != 0:
        raise SystemExit(f"error: git cannot resolve --ref {args.ref} in {ROOT} (a full clone is needed)")
    rates: dict[str, list[float]] = {"head": [], "ref": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref.stdout.strip()], cwd=ROOT, check=True)
        try:
            pythons = {"ref": reference_python(tree, Path(tmp)), "head": sys.executable}
            for r in range(args.rounds):
                for name, code in (("ref", tree), ("head", ROOT)):
                    rate = images_per_s(pythons[name], code, args.task, args.steps, Path(tmp) / f"{name}{r}", args.overrides)
                    rates[name].append(rate)
                    print(f"round {r}: {name:4s} {rate:7.1f} images/s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.task}, {args.steps} steps x {args.rounds} rounds, {' '.join(args.overrides) or 'defaults'}, "
          f"{date.today()}: HEAD {head.stdout.strip()} {med['head']:.1f} images/s, {args.ref} = "
          f"{ref.stdout.strip()} {med['ref']:.1f} images/s (medians): {med['head'] / med['ref']:.2f}x")


if __name__ == "__main__":
    main()
