"""Every recipe in configs/ builds its paper-sized model and trains two steps on a tiny
local stand-in of its dataset: the same columns, splits and input size."""
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from mmssl.config import load_recipe
from mmssl.run import resolve_config
from mmssl.trainer import train

pytestmark = pytest.mark.slow  # each test trains or launches processes for tens of seconds

RECIPES = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def small_mp4(path: Path, rng: np.random.Generator, frames: int = 40, side: int = 48) -> bytes:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path.read_bytes()


def stand_in(recipe: dict, root: Path) -> Path:
    """A save_to_disk DatasetDict with the recipe's splits and columns, a handful of rows each."""
    rng = np.random.default_rng(0)
    splits = {recipe.get("split", "train"): 8, recipe.get("eval_split") or "test": 4}
    label = recipe.get("label_column") or "label"
    parts = {}
    for split, n in splits.items():
        if recipe["task"].endswith("_audio"):
            audio = [{"array": rng.standard_normal(24000).astype(np.float32) * 0.1, "sampling_rate": 16000}
                     for _ in range(n)]
            parts[split] = datasets.Dataset.from_dict({recipe.get("audio_column", "audio"): audio,
                                                       label: [i % 2 for i in range(n)]})
        elif recipe["task"].endswith("_video"):
            # mp4 bytes in the column, as a Hub dataset of videos holds them; smaller than the crop
            videos = [small_mp4(root / f"{split}_{i}.mp4", rng) for i in range(n)]
            parts[split] = datasets.Dataset.from_dict({recipe.get("video_column", "video"): videos,
                                                       label: [i % 2 for i in range(n)]})
        else:
            # real datasets hold images of varied sizes: one a little larger than the crop, one smaller
            side = recipe.get("image_size", 32)
            sizes = [(side + 8, side + 4), (side // 2, side // 2)]
            images = [Image.fromarray(rng.integers(0, 255, (*sizes[i % 2], 3), dtype=np.uint8)) for i in range(n)]
            ds = datasets.Dataset.from_dict({recipe.get("image_column", "image"): images,
                                             label: [i % 2 for i in range(n)]})
            parts[split] = ds.cast_column(recipe.get("image_column", "image"), datasets.Image())
    path = root / "stand_in"
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_builds_and_trains_two_steps(recipe, tmp_path):
    data = load_recipe(recipe)
    assert data.get("dataset") and data["dataset"] != "demo", "a recipe names its real dataset"
    flags = {"dataset": str(stand_in(data, tmp_path)), "output_dir": str(tmp_path / "run"), "max_steps": 2}
    sizes = ["batch_size=2", "num_workers=0", "log_every=1", "monitor_every=0", "save_every=2"]
    if data["task"] == "colorize_video":
        sizes.append("quantizer_frames=16")  # the recipe's 2048 frames decode 256 clips before the first step
    if data["task"] == "deepcluster_image":
        sizes.append("objective.num_clusters=4")  # k-means needs at least as many images as clusters: 8 here, 10,000 in the recipe
    task, cfg = resolve_config(data["task"], str(recipe), flags, sizes)
    _objective, _ = train(task, cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
