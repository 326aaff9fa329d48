"""kNN against a plain loop, feature extraction, image probes, fine-tuning, and the plots."""
import json
import math
import re

import numpy as np
import pytest
import torch
from tiny_images import TINY_MAE, ColourImages, DiagonalImages, TinyEncoder, dark_and_light_folder, png_size, to_float

from mmssl.evaluation.knn import extract_features, knn_classify, knn_predict, pixels
from mmssl.evaluation.plots import embed_2d, embedding_plot, loss_curve, reconstruction_grid
from mmssl.evaluation.vision import FinetuneRecipe, finetune, image_probes, lr_at

# ---------------------------------------------------------------- kNN

def knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
    """Wu et al.'s weighted vote written as loops, one test item at a time."""
    preds = []
    for q in test_x.double():
        sims = [float(q @ t / (q.norm() * t.norm())) for t in train_x.double()]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[int(train_y[i])] += math.exp(sims[i] / temperature)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return torch.tensor(preds)


def test_knn_matches_loop_reference_in_chunks_and_clips_k():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(50, 6, generator=g), torch.randn(23, 6, generator=g)
    train_y, test_y = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (23,), generator=g)
    ks = (1, 5, 20, 500)  # 500 > 50 train items: every item votes
    preds = knn_predict(train_x, train_y, test_x, ks, temperature=0.07, num_classes=4, chunk=7)
    accs = knn_classify(train_x, train_y, test_x, test_y, ks, temperature=0.07, chunk=1024)
    for k in ks:
        ref = knn_reference(train_x, train_y, test_x, min(k, 50), 0.07, 4)
        assert torch.equal(preds[k], ref), k
        assert accs[k] == pytest.approx((ref == test_y).float().mean().item())
    assert torch.equal(preds[500], knn_predict(train_x, train_y, test_x, (50,), 0.07, 4)[50])


def test_knn_inside_bf16_autocast_matches_fp32():
    # the online monitor runs inside the training step's autocast (accelerate --mixed_precision bf16)
    g = torch.Generator().manual_seed(1)
    train_x, test_x = torch.randn(300, 32, generator=g), torch.randn(64, 32, generator=g)
    train_y = torch.randint(0, 5, (300,), generator=g)
    plain = knn_predict(train_x, train_y, test_x, (1, 20, 200), num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = knn_predict(train_x, train_y, test_x, (1, 20, 200), num_classes=5)
    for k in plain:
        assert torch.equal(mixed[k], plain[k]), k


def test_knn_hand_example_temperature_and_scale():
    # Query (1, 0): similarity 1 to a (class 0), 0.707 to c and 0 to b (both class 1).
    train_x = torch.tensor([[5.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # a's length must not matter
    train_y, test_x, test_y = torch.tensor([0, 1, 1]), torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    # k = 1, 2: a wins. k = 3 at T = 0.07: e^14.3 beats e^10.1 + e^0. At T = 1: e^1 = 2.72 < e^0.707 + 1 = 3.03.
    assert knn_classify(train_x, train_y, test_x, test_y, ks=(1, 2, 3), temperature=0.07) == {1: 0.0, 2: 0.0, 3: 0.0}
    assert knn_classify(train_x, train_y, test_x, test_y, ks=(1, 2, 3), temperature=1.0) == {1: 0.0, 2: 0.0, 3: 1.0}


def test_knn_separable_is_perfect_and_random_labels_are_chance():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(16)[:4] * 10
    train_y, test_y = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (100,), generator=g)
    train_x = centres[train_y] + torch.randn(200, 16, generator=g)
    test_x = centres[test_y] + torch.randn(100, 16, generator=g)
    assert knn_classify(train_x, train_y, test_x, test_y) == {20: 1.0, 200: 1.0}
    noise_x, noise_test = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    rand_y, rand_test = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (400,), generator=g)
    for acc in knn_classify(noise_x, rand_y, noise_test, rand_test, ks=(20, 200)).values():
        assert 0.15 < acc < 0.35


def test_knn_rejects_bad_inputs():
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="positive neighbour counts"):
        knn_classify(x, y, x, y, ks=(0,))
    with pytest.raises(ValueError, match="unlabelled"):
        knn_classify(x, torch.tensor([0, -1, 0, 1, 0]), x, y)
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        knn_classify(x, y, torch.randn(5, 4), y)


# ---------------------------------------------------------------- features

def test_extract_features_batches_equal_per_item_in_eval_mode():
    source, encoder = ColourImages(20, "train", unlabelled=(3,)), TinyEncoder()
    feats, labels = extract_features(encoder, source, to_float, batch_size=8)
    assert encoder.calls == 3 and encoder.training  # one call per batch, train mode restored
    single, _ = extract_features(encoder, source, to_float, batch_size=1)
    assert feats.shape == (20, 8) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, single)
    assert labels[3] == -1 and labels[4] == 1
    few, _few_labels = extract_features(encoder, source, to_float, max_items=5)
    torch.testing.assert_close(few, feats[:5])
    px, _px_labels = pixels(source, to_float, max_items=4)
    assert px.shape == (4, 3 * 8 * 8) and torch.equal(px[1], to_float(source[1]["image"]).flatten())
    assert pixels(source, to_float, max_items=2, size=4)[0].shape == (2, 3 * 4 * 4)


def test_token_readout_keeps_where_features_are_which_pooling_averages_away():
    train, test, encoder = DiagonalImages(80, "train"), DiagonalImages(40, "test", seed=1), TinyEncoder()
    tokens, labels = extract_features(encoder, train, to_float, batch_size=32, readout="tokens")
    assert tokens.shape == (80, 4 * 8) and labels.tolist() == train.labels.tolist()
    with torch.no_grad():
        first = encoder.eval().forward_features(to_float(train[0]["image"])[None])  # (1, 4, 8)
    torch.testing.assert_close(tokens[0], first.flatten())  # the token map in grid order
    pooled, _ = extract_features(encoder, train, to_float, readout="pooled")
    torch.testing.assert_close(pooled, tokens.view(80, 4, 8).mean(1))

    report = image_probes({"tiny": encoder, "tiny pooled": encoder}, train, test, to_float, ks=(5,),
                          readouts={"tiny": "tokens"})
    assert report["knn"]["tiny"][5] == 1.0 and report["linear"]["tiny"] == 1.0
    assert report["knn"]["tiny pooled"][5] < 0.75  # chance is 0.5: the mean colour carries no class
    assert "tiny pooled" in report["table"]
    with pytest.raises(ValueError, match="readout must be pooled or tokens, not 'cls'"):
        extract_features(encoder, train, to_float, readout="cls")
    with pytest.raises(ValueError, match="readout must be pooled or tokens"):
        image_probes({"tiny": encoder}, train, test, to_float, readouts={"tiny": "cls"})
    with pytest.raises(ValueError, match=r"\['other'\], which are not among the encoders"):
        image_probes({"tiny": encoder}, train, test, to_float, readouts={"other": "tokens"})


def test_image_task_probes_the_token_map_beside_the_pooled_features(tmp_path, capsys):
    from mmssl.config import ConfigError
    from mmssl.run import resolve_config

    dark_and_light_folder(tmp_path / "images", train=6, test=4)
    tiny = TINY_MAE
    flags = {"dataset": str(tmp_path / "images"), "label_column": "label", "output_dir": str(tmp_path / "run")}
    task, cfg = resolve_config("mae_image", None, flags, [*tiny, "readout=tokens"])
    encoder = task.build_objective(cfg).encoder
    report = task.evaluate(cfg, encoder)
    assert list(report["knn"]) == ["mae_image", "random", "mae_image pooled", "random pooled", "pixels"]
    assert report["num_train"] == 12 and report["num_test"] == 8
    assert "mae_image pooled" in report["table"]
    assert set(task.monitor(cfg, encoder)) == {"knn_top1", "rankme"}
    task, pooled_cfg = resolve_config("mae_image", None, flags, [*tiny, "readout=pooled"])
    assert list(task.evaluate(pooled_cfg, encoder)["knn"]) == ["mae_image", "random", "pixels"]
    _, bad = resolve_config("mae_image", None, flags, [*tiny, "readout=cls"])
    with pytest.raises(ConfigError, match="readout must be pooled or tokens, not 'cls'"):
        task.build_objective(bad)  # before any training step

    # A run trained with the pooled readout, probed afterwards on its token map from the command line.
    from mmssl.cli import main

    run = tmp_path / "run"
    assert main(["train", "--task", "mae_image", "--dataset", str(tmp_path / "images"), "--label-column", "label",
                 "--output-dir", str(run), "--max-steps", "1", "batch_size=4", "num_workers=0", "evaluate=false",
                 *tiny]) in (0, None)
    assert main(["probe", "--checkpoint", str(run), "--readout", "tokens", "--report", str(tmp_path / "r.json")]) in (0, None)
    probed = json.loads((tmp_path / "r.json").read_text())
    assert list(probed["knn"]) == ["mae_image", "random", "mae_image pooled", "random pooled", "pixels"]
    assert "finetune" not in probed
    assert main(["probe", "--checkpoint", str(run), "--finetune-steps", "2", "--finetune-lr", "2e-3",
                 "--report", str(tmp_path / "f.json"), "finetune_mixup=0", "finetune_layer_decay=0.5"]) in (0, None)
    tuned = json.loads((tmp_path / "f.json").read_text())["finetune"]
    assert 0 <= tuned["mae_image"] <= 1 and 0 <= tuned["random"] <= 1
    assert "2 steps of 64" in tuned["line"] and "lr 0.002" in tuned["line"]
    assert "layer decay 0.5" in tuned["line"] and "cutmix 1" in tuned["line"] and "mixup" not in tuned["line"]
    for bad, says in ((["finetune_drop_path=1"], "finetune_drop_path must be in [0, 1)"),
                      (["seed=3"], "seed is not one of mae_image's"), (["finetune_mixup=x"], "finetune_mixup")):
        assert main(["probe", "--checkpoint", str(run), *bad]) == 2
        assert says in capsys.readouterr().err


def test_fine_tuning_in_the_report_runs_the_trained_encoder_beside_its_random_init(tmp_path):
    from mmssl.config import ConfigError
    from mmssl.modalities.vision import MAEView
    from mmssl.run import resolve_config

    dark_and_light_folder(tmp_path / "images", train=6, test=4)
    flags = {"dataset": str(tmp_path / "images"), "label_column": "label", "output_dir": str(tmp_path / "run")}
    task, cfg = resolve_config("mae_image", None, flags, [*TINY_MAE, "finetune_steps=3", "seed=4"])
    encoder = task.build_objective(cfg).encoder
    report = task.evaluate(cfg, encoder)["finetune"]
    train, test = task.labelled_splits(cfg)
    # Each figure is the plain fine-tuning of that encoder, same recipe and seed: the trained encoder and
    # the same architecture from the random initialisation the probes use.
    for name, enc in (("mae_image", encoder), ("random", task.random_encoder(cfg, encoder))):
        alone = finetune(enc, train, test, MAEView(16), task.eval_view(cfg), 2, FinetuneRecipe(steps=3), seed=4)
        assert report[name] == alone["accuracy"] and report["train_loss"][name] == alone["train_loss"]
    assert report["train_loss"]["mae_image"] != report["train_loss"]["random"]
    assert "3 steps of 64" in report["line"] and "seed 4" in report["line"]
    for words in ("layer decay 0.75", "drop path 0.1", "mixup 0.8 / cutmix 1", "label smoothing 0.1"):
        assert words in report["line"]
    assert "mae_image" in report["line"] and "from random init" in report["line"]
    with pytest.raises(ConfigError, match="finetune_steps must be 0"):
        resolve_config("mae_image", None, flags, [*TINY_MAE, "finetune_steps=-1"])
    for bad, says in (("finetune_lr=0", "finetune_lr must be a positive rate"),
                      ("finetune_layer_decay=0", "finetune_layer_decay must be in (0, 1]"),
                      ("finetune_label_smoothing=1", "finetune_label_smoothing must be in [0, 1)"),
                      ("finetune_cutmix=-1", "finetune_cutmix must be 0 or more")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            resolve_config("mae_image", None, flags, [*TINY_MAE, bad])
    plain = ["finetune_mixup=0", "finetune_cutmix=0", "finetune_drop_path=0", "finetune_layer_decay=1",
             "finetune_label_smoothing=0"]
    task, fast = resolve_config("mae_image", None, flags, [*TINY_MAE, "finetune_steps=2", "finetune_lr=3e-3", *plain])
    faster = task.evaluate(fast, encoder)["finetune"]
    recipe = FinetuneRecipe(steps=2, lr=3e-3, layer_decay=1, drop_path=0, mixup=0, cutmix=0, label_smoothing=0)
    alone = finetune(encoder, train, test, MAEView(16), task.eval_view(fast), 2, recipe, seed=0)
    assert faster["mae_image"] == alone["accuracy"] and faster["train_loss"]["mae_image"] == alone["train_loss"]
    assert "lr 0.003" in faster["line"] and "no mixup or cutmix" in faster["line"]
    # The batched views fine-tuning makes are the views of the same transform called image by image.
    view = MAEView(16)
    one_by_one = finetune(encoder, train, test, lambda img, gen: view(img, gen), task.eval_view(fast), 2, recipe,
                          seed=0)
    assert one_by_one == alone


# ---------------------------------------------------------------- probes and fine-tuning

def test_image_probes_report_and_table():
    train, test = ColourImages(60, "colours/train", unlabelled=(0, 7)), ColourImages(30, "colours/test", seed=1)
    encoders = {"tiny": TinyEncoder(), "random_init": TinyEncoder(seed=3)}
    report = image_probes(encoders, train, test, to_float, ks=(5, 200))
    assert report["num_train"] == 58 and report["num_test"] == 30
    for name in ("tiny", "random_init", "pixels"):
        assert set(report["knn"][name]) == {5, 200} and 0 <= report["linear"][name] <= 1
    assert report["knn"]["tiny"][5] > 0.9 and report["linear"]["tiny"] > 0.9
    assert report["majority"] == pytest.approx(1 / 3)
    table = report["table"]
    for word in ("tiny", "random_init", "pixels", "majority", "knn k=5", "knn k=200 (=58)", "linear",
                 "colours/train", "colours/test"):
        assert word in table
    assert "RankMe (no labels)" in table and set(report["rankme"]) == {"tiny", "random_init", "pixels"}
    assert all(1 <= r <= 30 for r in report["rankme"].values())  # at most min(30 test images, D)
    small = image_probes({"tiny": TinyEncoder()}, train, test, to_float, ks=(5,), linear=False, max_train=20)
    assert small["num_train"] <= 20 and "linear" not in small and "linear" not in small["table"]
    nothing = image_probes({}, ColourImages(6, "u", unlabelled=range(6)), test, to_float)
    assert "nothing to probe" in nothing["table"]


def test_finetune_learns_on_tiny_data_and_leaves_encoder_alone():
    train, test = ColourImages(60, "train", unlabelled=(2,)), ColourImages(30, "test", seed=1)
    encoder = TinyEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    seen = []

    def flip(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(isinstance(gen, torch.Generator))
        return to_float(img).flip(-1) if torch.rand(1, generator=gen) < 0.5 else to_float(img)

    res = finetune(encoder, train, test, flip, to_float, num_classes=3,
                   recipe=FinetuneRecipe(steps=40, lr=3e-2, batch_size=16))
    assert all(seen) and len(seen) == 40 * 16
    assert res["accuracy"] > 0.8 and math.isfinite(res["train_loss"])
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1) and lr_at(100, 100, 1.0, 10) == pytest.approx(0.0)


def test_held_items_read_each_item_once_within_their_budget():
    from mmssl.evaluation.vision import HeldItems

    class Counted(ColourImages):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    source = Counted(10, "train")
    held = HeldItems(source, max_mib=3 * 8 * 8 * 4 / 2**20)  # room for four 8 x 8 images
    first = [held[i] for i in range(10)]
    again = [held[i] for i in range(10)]
    assert Counted.reads == 10 + 6 and held.used == 4 * 3 * 8 * 8  # the first four kept, the rest read again
    assert all(torch.equal(a["image"], b["image"]) and a["label"] == b["label"] for a, b in zip(first, again))
    assert len(held) == 10 and held.vocab == source.vocab and held.name == "train"
    Counted.reads = 0
    nothing = HeldItems(source, max_mib=0)
    _ = [nothing[0] for _ in range(3)]
    assert Counted.reads == 3 and not nothing.items
    # Fine-tuning on held items gives the figures of the source read every time.
    recipe = FinetuneRecipe(steps=6, batch_size=4, lr=1e-2)
    assert (finetune(TinyEncoder(), HeldItems(source, 1), ColourImages(6, "test", seed=1), lambda x, g: to_float(x),
                     to_float, 3, recipe)
            == finetune(TinyEncoder(), source, ColourImages(6, "test", seed=1), lambda x, g: to_float(x), to_float, 3,
                        recipe))


def test_finetune_recipe_layer_decay_weight_decay_and_drop_path_follow_mae():
    from mmssl.encoders.transformer import Block
    from mmssl.encoders.vit import ViT
    from mmssl.evaluation.vision import layer_ids, param_groups, set_drop_path

    vit = ViT(input_size=(16, 16), patch=(4, 4), dim=32, depth=3, heads=2, cls_token=True)
    head = torch.nn.Linear(32, 5)
    groups = param_groups(vit, head, FinetuneRecipe(layer_decay=0.5, weight_decay=0.05))
    where = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(where) == len(list(vit.parameters())) + 2  # every parameter, once
    # MAE's layers: embedding, class token and positions 0, block i is i + 1, the final norm and head last (4).
    assert where[id(vit.patch_embed.weight)] == (0.5**4, 0.05) and where[id(vit.cls_token)] == (0.5**4, 0.0)
    assert where[id(vit.blocks[0].qkv.weight)] == (0.5**3, 0.05) and where[id(vit.blocks[2].proj.weight)] == (0.5, 0.05)
    assert where[id(vit.blocks[1].qkv.bias)] == (0.25, 0.0) and where[id(vit.blocks[1].norm1.weight)] == (0.25, 0.0)
    assert where[id(vit.norm.weight)] == (1.0, 0.0) and where[id(head.weight)] == (1.0, 0.05)
    conv = TinyEncoder()
    assert layer_ids(conv) is None and not set_drop_path(conv, 0.1)
    assert {g["lr_scale"] for g in param_groups(conv, head, FinetuneRecipe(layer_decay=0.5))} == {1.0}
    assert set_drop_path(vit, 0.2) and [b.drop_path for b in vit.blocks] == pytest.approx([0.0, 0.1, 0.2])

    # Drop path: each sample keeps its branch (scaled by 1 / keep) or drops it; none of it in eval mode.
    block = Block(8, 2)
    block.drop_path = 0.25
    y = torch.randn(4000, 3, 8)
    kept = block.branch(y)
    scale = (kept / y)[:, 0, 0]
    assert torch.allclose(kept, y * scale[:, None, None])
    assert ((scale == 0) | torch.isclose(scale, torch.tensor(1 / 0.75))).all()
    assert abs((scale == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(block.eval().branch(y), y)


def test_mixup_and_cutmix_mix_images_and_targets_by_one_weight():
    from mmssl.evaluation.vision import mix_batch

    x = torch.rand(6, 3, 10, 10)
    t = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    mixed, mt = mix_batch(x, t, FinetuneRecipe(mixup=0.8, cutmix=0), np.random.default_rng(0))
    lam = float(np.random.default_rng(0).beta(0.8, 0.8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0)) and torch.allclose(mt, lam * t + (1 - lam) * t.flip(0))
    for seed in range(20):  # cutmix: the targets weigh each image by the share of pixels it keeps
        cut, ct = mix_batch(x, t, FinetuneRecipe(mixup=0, cutmix=1.0), np.random.default_rng(seed))
        own = (cut == x).all(1).float().mean((1, 2))  # (B,) share of each image's own pixels
        assert torch.allclose(ct, own[:, None] * t + (1 - own[:, None]) * t.flip(0), atol=1e-6)
    both = {mix_batch(x, t, FinetuneRecipe(), np.random.default_rng(s))[0].eq(x).any().item() for s in range(20)}
    assert both == {True, False}  # cutmix keeps some pixels as they were, mixup none
    same, st = mix_batch(x, t, FinetuneRecipe(mixup=0, cutmix=0), np.random.default_rng(0))
    assert same is x and st is t
    assert [f for f, _ in FinetuneRecipe(steps=0, lr=0, layer_decay=1.5, drop_path=-0.1, mixup=-1).problems()] == [
        "steps", "lr", "mixup", "layer_decay", "drop_path"]


def test_finetune_of_a_vit_is_repeatable_and_leaves_the_global_stream_alone():
    from mmssl.encoders.vit import ViT
    from mmssl.modalities.vision import MAEView

    train, test = ColourImages(24, "train"), ColourImages(12, "test", seed=1)
    vit = ViT(input_size=(16, 16), patch=(4, 4), dim=32, depth=2, heads=2)
    recipe = FinetuneRecipe(steps=4, batch_size=8, lr=1e-3, drop_path=0.5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = finetune(vit, train, test, MAEView(16), to_float, 3, recipe, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert finetune(vit, train, test, MAEView(16), to_float, 3, recipe, seed=1) == a
    assert finetune(vit, train, test, MAEView(16), to_float, 3, recipe, seed=2) != a
    assert all(b.drop_path == 0.0 for b in vit.blocks)  # set on the copy only
    with pytest.raises(ValueError, match="lr must be a positive rate"):
        finetune(vit, train, test, MAEView(16), to_float, 3, FinetuneRecipe(lr=0))


# ---------------------------------------------------------------- plots

def test_tsne_separates_two_blobs_and_embedding_plot_writes_png(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 64)), rng.normal(8, 1, (60, 64))]).astype(np.float32)
    y = np.repeat([0, 1], 60)
    xy = embed_2d(x, seed=0)
    assert xy.shape == (120, 2)
    assert LogisticRegression().fit(xy, y).score(xy, y) == 1.0
    np.testing.assert_allclose(embed_2d(x, seed=0), xy)  # deterministic
    y_plot = y.copy()
    y_plot[:5] = -1
    out = embedding_plot(torch.from_numpy(x), y_plot, tmp_path / "emb" / "tsne.png", class_names=["a", "b"],
                         title="blobs", max_points=100)
    assert out.stat().st_size > 0 and png_size(out) == (800, 600)
    assert png_size(embedding_plot(x, y, tmp_path / "pca.png", method="pca")) == (800, 600)
    with pytest.raises(ValueError, match=r"labels \(N,\)"):
        embedding_plot(x, y[:10], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="unknown method"):
        embedding_plot(x, y, tmp_path / "bad.png", method="umap")


def test_reconstruction_grid_images_spectrograms_video(tmp_path):
    rgb = torch.rand(3, 3, 16, 16)
    out = reconstruction_grid(rgb, rgb * 0.5, rgb + 0.2, tmp_path / "rgb.png", max_items=2, title="MAE")
    assert out.stat().st_size > 0 and png_size(out) == (600, 400)
    spec = torch.randn(3, 1, 32, 48)
    assert png_size(reconstruction_grid(spec, spec * 0, spec, tmp_path / "spec.png")) == (600, 600)
    shapes = []

    def denorm(x):
        shapes.append(tuple(x.shape))
        return x * 0.5 + 0.5

    video = torch.randn(2, 3, 4, 16, 16)
    assert png_size(reconstruction_grid(video, video, video, tmp_path / "video.png", denormalize=denorm)) == (600, 400)
    assert shapes == [(2, 3, 16, 16)] * 3
    with pytest.raises(ValueError, match="share one shape"):
        reconstruction_grid(rgb, rgb[:2], rgb, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="unpatchify"):
        tokens = torch.rand(2, 16, 48)
        reconstruction_grid(tokens, tokens, tokens, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 8, 8\)"):
        two = torch.rand(2, 2, 8, 8)
        reconstruction_grid(two, two, two, tmp_path / "bad.png")


def test_loss_curve_reads_metrics_jsonl(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 5.0 / (s + 1), "lr": 0.1} for s in range(10)]
    rows += [{"step": 8, "loss": 0.3, "lr": 0.1}]  # a resumed run logs step 8 again
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 10, "lo')  # killed mid-write
    out = loss_curve(metrics, tmp_path / "curves.png", keys=("loss", "lr"))
    assert out.stat().st_size > 0 and png_size(out) == (800, 600)
    assert png_size(loss_curve(metrics, tmp_path / "loss.png")) == (800, 300)
    with pytest.raises(ValueError, match="no values for accuracy.*logged: loss, lr"):
        loss_curve(metrics, tmp_path / "bad.png", keys=("accuracy",))
    metrics.write_text('{"step": 0, "loss": 1}\nnot json\n{"step": 1, "loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        loss_curve(metrics, tmp_path / "bad.png")


def test_rankme_matches_a_numpy_reference_and_counts_the_directions_in_use():
    from mmssl.evaluation.collapse import collapse_report, rankme

    z = torch.randn(50, 12, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3.0, 12)
    sigma = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    assert rankme(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    # r orthogonal directions of equal weight give exactly r; one line gives 1
    basis = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))[0]
    for r in (1, 3, 8):  # orthonormal columns times orthonormal rows: r singular values of 1
        z = torch.linalg.qr(torch.randn(200, r, dtype=torch.float64))[0] @ basis[:r]
        assert rankme(z) == pytest.approx(r, rel=1e-4)  # eps on the zero singular values: ~1e-5 relative
    line = torch.randn(100, 1) * torch.randn(1, 32)
    assert rankme(line) == pytest.approx(1.0, abs=1e-3)
    # collapse onto a few directions lowers it even when every dimension still varies
    spread, collapsed = torch.randn(300, 32), torch.randn(300, 2) @ torch.randn(2, 32) + 0.01 * torch.randn(300, 32)
    assert rankme(spread) > 20 and rankme(collapsed) < 3
    with pytest.raises(ValueError, match="all-zero"):
        rankme(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        rankme(torch.zeros(4))
    report = collapse_report({"spread": spread, "collapsed": collapsed}, "images", "hint")
    assert report["rankme"]["spread"] == pytest.approx(rankme(spread)) and "RankMe" in report["table"]
