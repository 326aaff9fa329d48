"""supcon_image carries each item's label from the source to the objective's batch."""
import pytest
import torch
from tiny_images import dark_and_light_folder

from mmssl.config import ConfigError
from mmssl.run import resolve_config

TINY = ["batch_size=8", "num_workers=0", "image_size=16", "encoder.convnet.widths=8,8", "objective.proj_hidden=8",
        "objective.proj_dim=8"]
PLAIN = ["views.0.jitter_prob=0", "views.0.gray_prob=0"]  # brightness survives the views


def test_labels_reach_the_batch_beside_their_images(tmp_path):
    folder = dark_and_light_folder(tmp_path / "data", train=8, test=2)
    task, cfg = resolve_config("supcon_image", None, {"output_dir": str(tmp_path / "run"), "dataset": str(folder),
                                                      "label_column": "label"}, [*TINY, *PLAIN])
    batches = iter(task.train_loader(cfg, 0, 1, 0))
    seen = set()
    for _ in range(3):
        with torch.no_grad():
            batch = task.on_device(cfg, next(batches))
        labels = batch["label"]
        assert labels.dtype == torch.int64 and labels.shape == (8,)
        seen.update(labels.tolist())
        for view in batch["views"]:  # class 1 (light) is brighter than class 0 (dark) in every view
            red = view[:, 0].mean(dim=(1, 2))
            assert red[labels == 1].min() > red[labels == 0].max()
    assert seen == {0, 1}
    objective = task.build_objective(cfg)
    assert torch.isfinite(objective(batch)["loss"])


def test_demo_labels_are_the_shapes_classes(tmp_path):
    task, cfg = resolve_config("supcon_image", None, {"output_dir": str(tmp_path)}, TINY)
    batch = next(iter(task.train_loader(cfg, 0, 1, 0)))
    assert batch["label"].shape == (8,) and 0 <= batch["label"].min() and batch["label"].max() < 10


def test_a_dataset_without_a_label_column_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"^supcon_image trains on labels: pass --label-column"):
        resolve_config("supcon_image", None, {"output_dir": str(tmp_path), "dataset": str(tmp_path / "anything")},
                       TINY)
