"""Every layout ``datasets.load_dataset`` opens, for each modality, opens as an mmssl source with
its splits, labels and media intact (layouts written by ``layouts.py``, offline)."""
from __future__ import annotations

import pytest
import torch
from layouts import LAYOUTS, write_layout

from mmssl.errors import DataError
from mmssl.modalities.audio import open_audio
from mmssl.modalities.video import open_videos, read_clip
from mmssl.modalities.vision import open_images

OPENERS = {"audio": open_audio, "image": open_images, "video": open_videos}


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("modality", list(OPENERS))
@pytest.mark.parametrize("kind", LAYOUTS)
def test_every_layout_opens_with_splits_and_labels(kind, modality, tmp_path):
    spec = write_layout(kind, modality, tmp_path)
    config = "clean" if kind == "snapshot_readme" else None
    train = OPENERS[modality](spec, "train", config, label_column="label")
    test = OPENERS[modality](spec, "test", config, label_column="label", vocab=train.vocab)
    assert (len(train), len(test)) == (6, 4)
    # csv / jsonl store the class index, the others the ClassLabel: either way two classes, alternating
    assert len(train.vocab) == 2
    assert [train[i]["label"] for i in range(4)] == [0, 1, 0, 1]
    assert [test[i]["label"] for i in range(2)] == [0, 1]  # the test split starts at an even item too
    item = train[1]
    if modality == "audio":
        assert item["audio"].dtype.name == "float32" and len(item["audio"]) == 6400
    elif modality == "image":
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
    else:
        clip = read_clip(item["video"], 4, 1, torch.Generator().manual_seed(0))
        assert clip["frames"].shape == (4, 3, 32, 32)


def test_a_split_the_tables_lack_names_the_split(tmp_path):
    spec = write_layout("snapshot", "image", tmp_path)
    with pytest.raises(DataError, match="validation"):
        open_images(spec, "validation")


def test_two_folders_with_the_same_name_and_config_do_not_share_a_cache(tmp_path):
    """datasets keys a README config by folder and config name; mmssl keys local tables by path."""
    first = write_layout("snapshot_readme", "audio", tmp_path / "a")
    second = write_layout("snapshot_readme", "image", tmp_path / "b")
    assert len(open_audio(first, "train", "clean")) == 6
    assert open_images(second, "train", "clean")[0]["image"].shape == (3, 16, 16)
