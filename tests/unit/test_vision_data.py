"""Vision data: the demo shapes (synthetic.py), image sources (data.py) and recipes (augment.py).

Every image file is written by the test into ``tmp_path`` with PIL; nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmssl.data import train_loader
from mmssl.errors import DataError
from mmssl.modalities.vision import (
    CLASSES,
    MEAN,
    STD,
    DecodeAndDraw,
    EvalView,
    ItemViews,
    MAEView,
    ViewSettings,
    denormalize,
    draw_params,
    make_views,
    normalize,
    open_images,
)
from mmssl.modalities.vision.synthetic import generate_shapes, load_demo_images

RECIPES = {
    "simclr": (lambda: ItemViews((ViewSettings(crops=2, size=16),)), [16, 16]),
    "byol": (lambda: ItemViews((ViewSettings(size=16, blur_prob=1.0), ViewSettings(size=16, solarize_prob=0.2))),
             [16, 16]),
    "multicrop": (lambda: ItemViews((ViewSettings(crops=2, size=16), ViewSettings(crops=3, size=8, max_scale=0.14))),
                  [16, 16, 8, 8, 8]),
    "mae": (lambda: MAEView(16), [16]),
    "eval": (lambda: EvalView(16), [16]),
}


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    """Keep the Arrow files ``datasets`` writes for an imagefolder out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def picture(k: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """A small RGB uint8 image (H, W, 3) that differs with k."""
    return np.random.default_rng(k).integers(0, 256, (*size, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_class_folders(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """``root/<split>/<class>/<k>.png``: class subfolders give imagefolder a ``label`` column."""
    for split, classes in layout.items():
        for c, (name, n) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(picture(100 * c + k)).save(root / split / name / f"{k}.png")


def views(out) -> list[torch.Tensor]:
    return out if isinstance(out, list) else [out]


# ---- demo shapes ----------------------------------------------------------------------------

def test_demo_generation_is_deterministic_balanced_and_size_independent():
    a, b = generate_shapes(3, 2, seed=0), generate_shapes(3, 2, seed=0)
    for split, n in (("train", 3), ("test", 2)):
        assert a[split]["image"].shape == (n * len(CLASSES), 32, 32, 3) and a[split]["image"].dtype == np.uint8
        assert a[split]["label"].dtype == np.int64
        assert np.array_equal(a[split]["image"], b[split]["image"])
        assert np.bincount(a[split]["label"]).tolist() == [n] * len(CLASSES)
    assert not np.array_equal(a["train"]["image"], generate_shapes(3, 2, seed=1)["train"]["image"])
    # Image i of a class depends on (seed, class, i) only: a larger set starts with the same images.
    bigger = generate_shapes(5, 0, seed=0)["train"]
    assert np.array_equal(bigger["image"][bigger["label"] == 4][:3], a["train"]["image"][a["train"]["label"] == 4])
    assert not np.array_equal(a["train"]["image"][:2], a["test"]["image"][:2])  # test images are new draws


def test_shape_coverage_is_where_the_shape_was_painted():
    from mmssl.modalities.vision.synthetic import _draw_params, _hsv_to_rgb, shape_coverage
    images = generate_shapes(4, 0, seed=0)["train"]["image"]
    for c, name in enumerate(CLASSES):
        params = [_draw_params(0, c, i, 32, 30.0) for i in range(4)]
        stacked = {k: np.array([q[k] for q in params]) for k in params[0]}
        cover = shape_coverage(name, stacked, 32)
        assert cover.shape == (4, 32, 32) and cover.min() >= 0 and cover.max() <= 1
        fg = _hsv_to_rgb(*stacked["fg"].T)  # (4, 3)
        for i in range(4):
            image = images[4 * c + i].astype(np.float64) / 255
            full, empty = cover[i] == 1, cover[i] == 0
            assert full.sum() >= 5 and empty.sum() > 100
            # Fully covered pixels hold the shape's colour (up to the added noise, std 0.015); empty
            # ones are farther from it on average (the background keeps a value gap of 0.3-0.6).
            inside = np.abs(image[full] - fg[i]).max(axis=1)
            outside = np.abs(image[empty] - fg[i]).max(axis=1)
            assert np.quantile(inside, 0.99) < 0.07 and outside.mean() > 0.2

def test_load_demo_images_caches_atomically(tmp_path):
    first = load_demo_images(tmp_path, train_per_class=2, test_per_class=1)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("shapes_v") and files[0].endswith(".npz")  # no temp file left
    again = load_demo_images(tmp_path, train_per_class=2, test_per_class=1)
    assert np.array_equal(first["test"]["image"], again["test"]["image"])
    load_demo_images(tmp_path, train_per_class=2, test_per_class=2)  # other arguments, other file
    assert len(list(tmp_path.iterdir())) == 2


def test_demo_source_and_weak_raw_pixel_knn():
    """Colour, position, scale, rotation and background hide the class from raw pixels: cosine
    kNN (k=20) on pixels of the default set measured 0.187 (chance 0.10), against 1.0 for the shape."""
    train, test = open_images("demo", "train"), open_images("demo", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.vocab == CLASSES and train.num_classes == len(CLASSES)
    item = test[7]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert 0 <= item["label"] < len(CLASSES) and item["name"] == "demo/test/7"
    with pytest.raises(DataError, match="splits"):
        open_images("demo", "validation")

    def unit(images):
        x = torch.from_numpy(images.reshape(len(images), -1)).float()
        return x / x.norm(dim=1, keepdim=True)

    nearest = (unit(test.images) @ unit(train.images).T).topk(20, dim=1).indices
    votes = torch.nn.functional.one_hot(torch.from_numpy(train.labels)[nearest], len(CLASSES)).sum(1)
    accuracy = (votes.argmax(1) == torch.from_numpy(test.labels)).float().mean().item()
    assert 0.12 < accuracy < 0.30, accuracy


# ---- sources ------------------------------------------------------------------------------

def test_imagefolder_with_class_subfolders(tmp_path):
    write_class_folders(tmp_path / "data", {"train": {"cat": 3, "dog": 2, "eel": 2}, "test": {"dog": 2, "cat": 1}})
    train = open_images(str(tmp_path / "data"), "train", label_column="label")
    assert len(train) == 7 and train.vocab == ["cat", "dog", "eel"] and train.num_classes == 3
    labels = sorted(train[i]["label"] for i in range(len(train)))
    assert labels == [0, 0, 0, 1, 1, 2, 2]
    item = train[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 12, 10)
    test = open_images(str(tmp_path / "data"), "test", label_column="label", vocab=train.vocab)
    assert sorted(test[i]["label"] for i in range(len(test))) == [0, 1, 1]
    # The decoded pixels are the ones written.
    found = {tuple(test[i]["image"].flatten()[:5].tolist()) for i in range(len(test))}
    assert tuple(torch.from_numpy(picture(0)).permute(2, 0, 1).flatten()[:5].tolist()) in found


def test_flat_folder_is_unlabelled(tmp_path):
    (tmp_path / "flat").mkdir()
    for k in range(3):
        Image.fromarray(picture(k)).save(tmp_path / "flat" / f"{k}.jpg")
    source = open_images(str(tmp_path / "flat"), "train")
    assert len(source) == 3 and source.vocab is None and source.num_classes is None
    assert {source[i]["label"] for i in range(3)} == {-1}
    assert source[1]["image"].shape == (3, 12, 10)


def save_disk_dataset(root: Path) -> None:
    import datasets

    def split(kinds):
        ds = datasets.Dataset.from_dict({
            "picture": [{"bytes": png_bytes(picture(k)), "path": None} for k in range(len(kinds))], "kind": kinds,
        })
        return ds.cast_column("picture", datasets.Image())

    datasets.DatasetDict({"train": split(["b", "a", "b", "c"]), "test": split(["a", "zzz"])}).save_to_disk(str(root))


def test_save_to_disk_with_custom_columns(tmp_path):
    save_disk_dataset(tmp_path / "saved")
    train = open_images(str(tmp_path / "saved"), "train", image_column="picture", label_column="kind")
    assert train.vocab == ["a", "b", "c"] and [train[i]["label"] for i in range(4)] == [1, 0, 1, 2]
    assert torch.equal(train[2]["image"], torch.from_numpy(picture(2)).permute(2, 0, 1))
    test = open_images(str(tmp_path / "saved"), "test", image_column="picture", label_column="kind", vocab=train.vocab)
    assert [test[i]["label"] for i in range(2)] == [0, -1]  # a class train never saw


def test_missing_columns_name_the_existing_ones(tmp_path):
    save_disk_dataset(tmp_path / "saved")
    with pytest.raises(DataError, match=r"no column 'image'.*columns: picture, kind"):
        open_images(str(tmp_path / "saved"), "train")
    with pytest.raises(DataError, match=r"no column 'label'.*--label-column.*picture, kind"):
        open_images(str(tmp_path / "saved"), "train", image_column="picture", label_column="label")
    with pytest.raises(DataError, match=r"none of its 4 images can be read: b \(FileNotFoundError\)"):
        open_images(str(tmp_path / "saved"), "train", image_column="kind")  # strings are taken as paths


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(picture(k)).save(folder / f"good{k}.png")
    (folder / "x.png").write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 images.*x\.png") as caught:
        source = open_images(str(folder), "train")
    assert len([w for w in caught if "skipped" in str(w.message)]) == 1
    assert len(source) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every remaining image reads without a warning
        assert all(source[i]["image"].shape == (3, 12, 10) for i in range(3))


def test_image_failing_at_read_time_is_replaced(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(picture(0, (40, 40))).save(folder / "a.png")
    Image.fromarray(picture(1, (40, 40))).save(folder / "b.png")
    data = (folder / "a.png").read_bytes()
    (folder / "a.png").write_bytes(data[: len(data) // 2])  # the header survives, the pixels do not
    source = open_images(str(folder), "train")
    assert len(source) == 2  # passes the header scan
    with pytest.warns(UserWarning, match=r"a\.png"):
        items = [source[i] for i in range(2)]
    assert all(torch.equal(it["image"], torch.from_numpy(picture(1, (40, 40))).permute(2, 0, 1)) for it in items)


def test_all_unreadable_raises(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for k in range(2):
        (folder / f"bad{k}.png").write_bytes(b"not an image" * k)
    with pytest.raises(DataError, match=r"none of its 2 images can be read.*bad0\.png"):
        open_images(str(folder), "train")


def test_every_mode_becomes_rgb(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray, "L").save(folder / "gray.png")
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[:3, :, 3] = 200, 255  # red in the top half, fully transparent below
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((6, 8), 65535, np.uint16)).save(folder / "deep.png")  # 16-bit grayscale
    Image.fromarray(picture(3, (6, 8))).convert("P").save(folder / "palette.png")
    source = open_images(str(folder), "train")
    images = {Path(source.ds[row]["image"]["path"]).stem: source[i]["image"] for i, row in enumerate(source.rows)}
    assert set(images) == {"gray", "rgba", "deep", "palette"}
    for image in images.values():
        assert image.dtype == torch.uint8 and image.shape == (3, 6, 8)
    assert torch.equal(images["gray"][1], torch.from_numpy(gray))
    assert images["rgba"][:, 0, 0].tolist() == [200, 0, 0] and images["rgba"][:, 5, 0].tolist() == [255, 255, 255]
    assert int(images["deep"].min()) == 255  # rescaled to 8 bits, not clipped from 16


# ---- augmentation recipes -----------------------------------------------------------------

@pytest.mark.parametrize("name", RECIPES)
def test_recipe_shapes_even_from_a_smaller_image(name):
    make, sizes = RECIPES[name]
    recipe = make()
    for shape in ((3, 8, 8), (3, 40, 24)):  # smaller than the crop (upsampled), and larger
        out = views(recipe(torch.randint(0, 256, shape, dtype=torch.uint8), torch.Generator().manual_seed(0)))
        assert [tuple(v.shape) for v in out] == [(3, s, s) for s in sizes]
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_randomness_comes_only_from_the_generator(name):
    recipe = RECIPES[name][0]()
    img = torch.from_numpy(picture(5, (24, 24))).permute(2, 0, 1).contiguous()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = views(recipe(img, torch.Generator().manual_seed(7)))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.manual_seed(999)  # a different global state does not change the views
    b = views(recipe(img, torch.Generator().manual_seed(7)))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = views(recipe(img, torch.Generator().manual_seed(8)))
    assert any(not torch.equal(x, y) for x, y in zip(a, c)) == (name != "eval")
    if len(a) > 1 and a[0].shape == a[1].shape:
        assert not torch.equal(a[0], a[1])  # the two views of one item differ


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "eval"])
def test_item_views_of_a_batch_equal_its_items_views_one_by_one(name):
    """``ItemViews.batch`` (fine-tuning's path) makes, for images of mixed sizes, exactly the views
    that calling the recipe on each image in turn makes, and leaves the generator where they do."""
    recipe = RECIPES[name][0]()
    images = [torch.from_numpy(picture(k, size)).permute(2, 0, 1).contiguous()
              for k, size in enumerate([(24, 24), (12, 10), (24, 24), (40, 24), (12, 10)])]
    one, many = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    singles = [views(recipe(img, one)) for img in images]
    batched = views(recipe.batch(images, many))
    assert len(batched) == len(singles[0])
    for v, made in enumerate(batched):
        assert torch.equal(made, torch.stack([s[v] for s in singles]))
    assert torch.equal(one.get_state(), many.get_state())
    with pytest.raises(ValueError, match="at least one image"):
        recipe.batch([], many)
    with pytest.raises(ValueError, match="uint8"):
        recipe.batch([images[0].float()], many)


def test_normalisation():
    img = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    z = normalize(img)
    assert torch.allclose(z[0, :, 0, 0], (img[0, :, 0, 0] / 255 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert torch.allclose(denormalize(z), img / 255, atol=1e-6)


def test_recipe_in_the_seeded_loader(tmp_path):
    """Through mmssl.data: two loaders with one seed give the same views batch for batch, and images of
    different sizes stack once the workers resize them to the working size."""
    write_class_folders(tmp_path / "data", {"train": {"a": 4, "b": 4}})
    source = open_images(str(tmp_path / "data"), "train", label_column="label")
    settings = (ViewSettings(crops=2, size=8),)
    decode = DecodeAndDraw(settings, 8)

    def transform(item, gen):
        return {**decode(item["image"], gen), "label": item["label"]}

    def first_batches(n):
        it = iter(train_loader(source, transform, batch_size=4, world=1, rank=0, seed=3))
        return [make_views(b["image"], draw_params(settings, b["source_size"], b["view_seed"]), settings)
                for b in (next(it) for _ in range(n))]

    for x, y in zip(first_batches(3), first_batches(3)):
        assert x[0].shape == (4, 3, 8, 8) and torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_held_images_give_the_batches_the_workers_decode(tmp_path):
    """A folder of mixed sizes with labels and one file that breaks at read time: the training set
    held in memory yields, batch for batch, what the workers decode and collate (images resized to the
    working size, source sizes, view seeds, indices, labels), for two processes and a resumed start."""
    from mmssl.data import GatheredBatches
    from mmssl.run import resolve_config

    root = tmp_path / "data"
    write_class_folders(root, {"train": {"a": 5, "b": 4}, "test": {"a": 2, "b": 2}})
    Image.fromarray(picture(7, (20, 14))).save(root / "train" / "b" / "wide.png")
    data = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "0.png").write_bytes(data[: len(data) // 2])  # fails when decoded, not at the scan
    task, cfg = resolve_config("supcon_image", None, {"output_dir": str(tmp_path / "run"), "dataset": str(root),
                                                      "label_column": "label"},
                               ["batch_size=2", "num_workers=0", "image_size=8", "encoder.convnet.widths=8,8"])
    with pytest.warns(UserWarning, match=r"0\.png"):
        held = [task.train_loader(cfg, 3, 2, r) for r in (0, 1)]
    assert all(isinstance(h, GatheredBatches) for h in held)
    decoded = dataclasses.replace(cfg, in_memory_mib=0, num_workers=2)
    for rank in (0, 1):
        ours, theirs = iter(held[rank]), iter(task.train_loader(decoded, 3, 2, rank))
        for _ in range(6):  # past an epoch's end (10 images: 2 global batches of 4)
            a, b = next(ours), next(theirs)
            assert sorted(a) == sorted(b) == ["image", "index", "label", "source_size", "view_seed"]
            for key in a:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    sizes = {tuple(s) for s in held[0].items["source_size"].tolist()}
    assert sizes == {(12, 10), (20, 14)} and held[0].items["image"].shape == (10, 3, 8, 8)


def test_in_memory_mib_picks_the_path_and_refuses_a_negative_budget(tmp_path):
    from mmssl.config import ConfigError
    from mmssl.data import GatheredBatches
    from mmssl.run import resolve_config

    write_class_folders(tmp_path / "data", {"train": {"a": 4, "b": 4}})
    over = {"output_dir": str(tmp_path / "run"), "dataset": str(tmp_path / "data")}
    task, cfg = resolve_config("simclr_image", None, over, ["batch_size=4", "num_workers=0", "image_size=8"])
    assert isinstance(task.train_loader(cfg, 0, 1, 0), GatheredBatches)  # 8 x 3 x 8 x 8 bytes
    assert isinstance(task.train_loader(dataclasses.replace(cfg, in_memory_mib=0), 0, 1, 0), torch.utils.data.DataLoader)
    # views made in the workers need the workers
    assert isinstance(task.train_loader(cfg, 0, 1, 0, batch_fn=lambda b: b), torch.utils.data.DataLoader)
    with pytest.raises(ConfigError, match="in_memory_mib"):
        resolve_config("simclr_image", None, over, ["in_memory_mib=-1"])
