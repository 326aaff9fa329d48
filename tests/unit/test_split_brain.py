"""Split-brain autoencoders: the loss against a per-cell loop, the halves' independence, the encoder's
save / load, the fitted colour classes and the settings' errors."""
import dataclasses
import math

import pytest
import torch

import mmssl.tasks  # noqa: F401
from mmssl import ENCODERS, load_encoder, save_encoder
from mmssl.config import ConfigError
from mmssl.modalities.vision import normalize
from mmssl.objectives.colorization import ColorQuantizer
from mmssl.objectives.split_brain import SplitBrain, SplitBrainSettings
from mmssl.run import resolve_config


def pixel_lab(r: float, g: float, b: float) -> tuple[float, float, float]:
    """One sRGB pixel in [0, 1] -> CIE Lab (D65), written out from the standards (IEC 61966-2-1, CIE 1976)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    x = 0.4124564 * lin[0] + 0.3575761 * lin[1] + 0.1804375 * lin[2]
    y = 0.2126729 * lin[0] + 0.7151522 * lin[1] + 0.0721750 * lin[2]
    z = 0.0193339 * lin[0] + 0.1191920 * lin[1] + 0.9503041 * lin[2]
    white = (0.9504700, 1.0, 1.0888300)

    def f(t):
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / white[0]), f(y / white[1]), f(z / white[2])
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def encoder(widths=(8, 16)):
    torch.manual_seed(0)
    return ENCODERS.build("split_brain", widths=list(widths))


def fitted(k: int, seed: int = 0) -> ColorQuantizer:
    ab = torch.randn(200, 2, generator=torch.Generator().manual_seed(seed)) * 30
    return ColorQuantizer(k).fit(ab, generator=torch.Generator().manual_seed(seed))


def test_loss_matches_a_per_cell_loop():
    rgb = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    objective = SplitBrain(encoder(), fitted(5), ab_bins=5, l_bins=7)
    with torch.no_grad():  # the heads' biases start at zero: give them values, so a misused bias shows
        objective.head_ab.bias.normal_()
        objective.head_l.bias.normal_()
    out = objective({"input": normalize(rgb)})
    f_l, f_ab = objective.encoder.half_maps(objective.encoder.lab(normalize(rgb)))  # (B, 4, 2, 2) each
    centers = objective.quantizer.centers.tolist()
    w_ab, b_ab = objective.head_ab.weight[:, :, 0, 0].tolist(), objective.head_ab.bias.tolist()
    w_l, b_l = objective.head_l.weight[:, :, 0, 0].tolist(), objective.head_l.bias.tolist()
    losses = {"ab": [], "l": []}
    hits = {"ab": [], "l": []}
    for b in range(3):
        for i in range(2):
            for j in range(2):  # each cell of the 2x2 map is a 4x4 block of pixels
                block = [pixel_lab(*rgb[b, :, 4 * i + y, 4 * j + x].tolist()) for y in range(4) for x in range(4)]
                L, A, B = (sum(p[c] for p in block) / 16 for c in range(3))
                y_ab = min(range(5), key=lambda c: (A - centers[c][0]) ** 2 + (B - centers[c][1]) ** 2)
                y_l = min(int(L * 7 / 100), 6)
                for key, feats, w, bias, y in (("ab", f_l, w_ab, b_ab, y_ab), ("l", f_ab, w_l, b_l, y_l)):
                    h = feats[b, :, i, j].tolist()
                    logits = [sum(wc * hc for wc, hc in zip(row, h)) + bc for row, bc in zip(w, bias)]
                    top = max(logits)
                    losses[key].append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y])
                    hits[key].append(float(logits.index(top) == y))
    want = {k: sum(v) / len(v) for k, v in losses.items()}
    torch.testing.assert_close(out["loss_ab"].item(), want["ab"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss_l"].item(), want["l"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"].item(), want["ab"] + want["l"], rtol=1e-4, atol=1e-5)
    assert out["acc_ab"].item() == pytest.approx(sum(hits["ab"]) / 12)
    assert out["acc_l"].item() == pytest.approx(sum(hits["l"]) / 12)


def test_each_half_reads_only_its_channels_and_learns_only_its_loss():
    enc = encoder()
    lab = torch.cat([torch.rand(4, 1, 16, 16) * 100, torch.randn(4, 2, 16, 16) * 40], dim=1)
    other_ab = torch.cat([lab[:, :1], torch.randn(4, 2, 16, 16) * 40], dim=1)
    other_l = torch.cat([torch.rand(4, 1, 16, 16) * 100, lab[:, 1:]], dim=1)
    f_l, f_ab = enc.half_maps(lab)
    torch.testing.assert_close(enc.half_maps(other_ab)[0], f_l)  # new colours: the L half is unchanged
    assert not torch.allclose(enc.half_maps(other_ab)[1], f_ab)
    torch.testing.assert_close(enc.half_maps(other_l)[1], f_ab)  # new lightness: the ab half is unchanged
    assert not torch.allclose(enc.half_maps(other_l)[0], f_l)
    x = normalize(torch.rand(4, 3, 16, 16))
    torch.testing.assert_close(enc.feature_map(x), torch.cat(enc.half_maps(enc.lab(x)), dim=1))
    assert enc.forward_features(x).shape == (4, 16, 16) and enc.embed_dim == 16

    objective = SplitBrain(enc, fitted(4), ab_bins=4, l_bins=8)
    out = objective({"input": x})
    for loss, learns, still in (("loss_ab", ("encoder.l_net", "head_ab"), ("encoder.ab_net", "head_l")),
                                ("loss_l", ("encoder.ab_net", "head_l"), ("encoder.l_net", "head_ab"))):
        objective.zero_grad()
        # the logged losses are detached: recompute the one asked for from the objective's own pieces
        lab = enc.lab(x)
        f_l, f_ab = enc.half_maps(lab)
        y_ab, y_l = objective.targets(lab, f_l.shape[-2:])
        pick = (objective.head_ab(f_l), y_ab) if loss == "loss_ab" else (objective.head_l(f_ab), y_l)
        torch.nn.functional.cross_entropy(*pick).backward()
        for name, p in objective.named_parameters():
            grad = 0.0 if p.grad is None else p.grad.abs().sum().item()
            if name.startswith(learns):
                assert grad > 0, (loss, name)
            elif name.startswith(still):
                assert grad == 0, (loss, name)
    assert torch.isfinite(out["loss"])


def test_encoder_round_trips_through_save_and_load(tmp_path):
    enc = encoder((8, 16, 32)).eval()
    x = normalize(torch.rand(2, 3, 32, 32))
    save_encoder(enc, tmp_path / "run" / "encoder", task="split_brain_image", modality="image")
    loaded = load_encoder(tmp_path / "run")
    torch.testing.assert_close(loaded.forward_features(x), enc.forward_features(x))
    assert loaded.embed_dim == 32 and loaded.forward_features(x).shape == (2, 16, 32)
    fresh = load_encoder(tmp_path / "run", pretrained=False)
    assert not torch.allclose(fresh.forward_features(x), enc.forward_features(x))


def test_settings_errors():
    assert dataclasses.asdict(SplitBrainSettings()) == {"ab_bins": 313, "l_bins": 100}  # the paper's
    for kw, match in [({"ab_bins": 1, "l_bins": 10}, "ab_bins >= 2"), ({"ab_bins": 4, "l_bins": 1}, "l_bins >= 2"),
                      ({"ab_bins": 5, "l_bins": 10}, "has 4 centres but ab_bins is 5")]:
        with pytest.raises(ValueError, match=match):
            SplitBrain(encoder(), fitted(4), **kw)
    with pytest.raises(ValueError, match="even channel counts"):
        ENCODERS.build("split_brain", widths=[8, 15])
    with pytest.raises(ValueError, match="quantizer is not fitted"):
        SplitBrain(encoder(), ColorQuantizer(4), ab_bins=4, l_bins=8)({"input": torch.randn(2, 3, 8, 8)})
    base = ["num_workers=0", "image_size=16", "encoder.convnet.widths=8,8,8,8"]
    for override, match in [("objective.ab_bins=1", "objective \\(split_brain\\): split-brain needs ab_bins >= 2"),
                            ("objective.l_bins=0", "needs ab_bins >= 2 and l_bins >= 2 classes, got \\d+ and 0"),
                            ("quantizer_images=0", "quantizer_images must be at least 1")]:
        with pytest.raises(ConfigError, match=match):
            task, cfg = resolve_config("split_brain_image", None, {}, [*base, override])
            task.build_objective(cfg)


def test_the_task_fits_the_same_colour_classes_from_the_seed():
    base = ["num_workers=0", "image_size=16", "encoder.convnet.widths=8,8,8", "quantizer_images=64",
            "objective.ab_bins=8"]
    task, cfg = resolve_config("split_brain_image", None, {}, base)
    first, again = task.fit_quantizer(cfg), task.fit_quantizer(cfg)
    torch.testing.assert_close(first.centers, again.centers)
    assert len(set(map(tuple, first.centers.tolist()))) == 8  # 8 distinct colours on the 4 cells of 64 images
    other = task.fit_quantizer(dataclasses.replace(cfg, seed=1))
    assert not torch.allclose(other.centers, first.centers)
    # 64 images of a 1x1 map (four stride-2 stages on 16 px) are 64 cells: too few for 100 classes
    task, cfg = resolve_config("split_brain_image", None, {}, [*base, "encoder.convnet.widths=8,8,8,8",
                                                               "objective.ab_bins=100"])
    with pytest.raises(ConfigError, match="objective.ab_bins=100 colour classes on the 64 feature cells of 64"):
        task.build_objective(cfg)
