"""Relative position (context prediction): the grid's places, gaps and jitter; the label against
an image whose pixels are their own coordinates; colour dropping and projection against plain
references; the loss against a loop over pairs; and the settings it refuses."""
import itertools

import pytest
import torch
from tiny_images import TinyEncoder

from mmssl.config import ConfigError
from mmssl.objectives.relative_position import RelativePosition, drop_colors, project_colors, standardize
from mmssl.objectives.tiles import crop_patches
from mmssl.run import resolve_config

# (row, col) steps of the neighbour that labels 0..7 name: the 3x3 grid read row by row, centre left out.
OFFSETS = [(dr, dc) for dr, dc in itertools.product((-1, 0, 1), repeat=2) if (dr, dc) != (0, 0)]


def objective(**kw):
    settings = {"patch_size": 5, "gap": 3, "jitter": 1, "patch_dim": 4, "hidden": 8, **kw}
    return RelativePosition(TinyEncoder(), **settings)


def test_pairs_sit_on_the_grid_with_gaps_and_jitter():
    """For every pair, written as a loop: both patches inside the image, the neighbour one grid step
    (patch + gap) away in the labelled direction up to the two patches' jitter; over many draws every
    label, every jitter and every place of the grid in the image occurs."""
    p, g, j = 5, 3, 1
    obj = objective(patch_size=p, gap=g, jitter=j)
    H, W, B = 24, 26, 4000
    torch.manual_seed(0)
    starts, labels = obj.positions(B, H, W)
    assert starts.shape == (B, 2, 2) and labels.shape == (B, 1)
    labels = labels[:, 0]
    step = p + g
    seen_labels, seen_shake, seen_centre = set(), set(), set()
    for b in range(B):
        (cr, cc), (nr, nc) = starts[b].tolist()
        for r, c in ((cr, cc), (nr, nc)):
            assert 0 <= r <= H - p and 0 <= c <= W - p
        dr, dc = OFFSETS[labels[b]]
        shake = (nr - cr - dr * step, nc - cc - dc * step)
        assert max(abs(shake[0]), abs(shake[1])) <= 2 * j
        # the pixels between the two patches along each axis they are apart on: at least the gap less the jitter
        if dr:
            assert (nr - (cr + p) if dr > 0 else cr - (nr + p)) >= g - 2 * j
        if dc:
            assert (nc - (cc + p) if dc > 0 else cc - (nc + p)) >= g - 2 * j
        seen_labels.add(int(labels[b]))
        seen_shake.add(shake)
        seen_centre.add((cr, cc))
    assert seen_labels == set(range(8))
    assert seen_shake == set(itertools.product(range(-2 * j, 2 * j + 1), repeat=2))
    # the centre patch: grid corner (j .. size - span - j) + one step + its own jitter (-j .. j)
    span = 3 * p + 2 * g
    assert seen_centre == set(itertools.product(range(step, H - span + step + 1), range(step, W - span + step + 1)))
    counts = torch.bincount(labels, minlength=8).float()
    assert (counts / B - 1 / 8).abs().max() < 0.02  # drawn uniformly


def test_crops_are_the_image_at_their_places():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 20, 20, generator=g)
    starts = torch.randint(0, 16, (3, 2, 2), generator=g)
    patches = crop_patches(x, starts, 5)
    for b, k in itertools.product(range(3), range(2)):
        r, c = starts[b, k].tolist()
        assert torch.equal(patches[b, k], x[b, :, r:r + 5, c:c + 5])


def test_the_label_names_where_the_neighbour_was():
    """An image whose channels hold each pixel's row and column: the patches' pixels say where they
    were cut, so the direction from the centre to the neighbour must be the labelled one."""
    obj = objective(patch_size=4, gap=2, jitter=1, pairs=3)
    rows, cols = torch.meshgrid(torch.arange(22.0), torch.arange(22.0), indexing="ij")
    x = torch.stack([rows, cols, torch.zeros_like(rows)])[None].expand(64, 3, 22, 22)
    torch.manual_seed(3)
    patches, labels = obj.cut(x)
    assert patches.shape == (64, 4, 3, 4, 4) and labels.shape == (64, 3)
    for b in range(64):
        centre = patches[b, 0, :2, 0, 0]  # (row, col) of the centre's top-left pixel
        assert torch.equal(patches[b, 0, 0], centre[0] + torch.arange(4.0)[:, None].expand(4, 4))  # whole crops
        assert len(set(labels[b].tolist())) == 3  # distinct neighbours of one centre
        for i in range(3):
            neighbour = patches[b, 1 + i, :2, 0, 0]
            dr, dc = torch.round((neighbour - centre) / 6).long().tolist()  # one grid step is 4 + 2 px
            assert OFFSETS.index((dr, dc)) == labels[b, i]


def test_every_neighbour_once_with_pairs_8():
    torch.manual_seed(0)
    _, labels = objective(pairs=8).positions(16, 24, 24)
    assert torch.equal(labels.sort(1).values, torch.arange(8).expand(16, 8))


def test_colour_dropping_keeps_one_channel_and_fills_the_others_with_scaled_noise():
    g = torch.Generator().manual_seed(2)
    patches = torch.rand(4, 2, 3, 6, 6, generator=g)
    keep = torch.randint(0, 3, (4, 2), generator=g)
    noise = torch.randn(4, 2, 3, 6, 6, generator=g)
    out = drop_colors(patches, keep, noise, 0.01)
    for b, k in itertools.product(range(4), range(2)):
        kept = patches[b, k, keep[b, k]]
        for c in range(3):
            expected = kept if c == keep[b, k] else noise[b, k, c] * 0.01 * kept.std()
            torch.testing.assert_close(out[b, k, c], expected)


def test_decolor_drop_draws_one_kept_channel_per_patch():
    obj = objective(color_mode="drop")
    patches = torch.rand(50, 2, 3, 6, 6)
    out = obj.decolor(patches)
    same = (out == patches).flatten(3).all(-1)  # (50, 2, 3)
    assert (same.sum(-1) == 1).all()  # one channel kept in every patch
    assert set(same.float().argmax(-1).flatten().tolist()) == {0, 1, 2}  # each channel kept somewhere
    kept_std = patches[same].flatten(1).std(1)  # (100,)
    dropped_std = out[~same].view(50 * 2, 2, 36).std(-1)
    assert ((dropped_std / kept_std[:, None] - 0.01).abs() < 0.005).all()


def test_projection_removes_the_green_magenta_axis():
    g = torch.Generator().manual_seed(4)
    patches = torch.rand(2, 2, 3, 4, 4, generator=g)
    out = project_colors(patches)
    b = torch.tensor([-1.0, 2.0, -1.0])
    for i, k, r, c in itertools.product(range(2), range(2), range(4), range(4)):
        v = patches[i, k, :, r, c]
        torch.testing.assert_close(out[i, k, :, r, c], v - v.dot(b) / b.dot(b) * b)
    grey = torch.full((1, 3, 2, 2), 0.3)
    torch.testing.assert_close(project_colors(grey), grey)  # grey pixels stay as they are
    assert torch.equal(objective(color_mode="project").decolor(patches), out)
    assert torch.equal(objective(color_mode="none").decolor(patches), patches)


def test_patches_are_centred_per_channel_and_scaled_to_unit_rms():
    patches = torch.rand(3, 2, 3, 5, 5) * 4 + 2
    out = standardize(patches)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), torch.zeros(3, 2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.square().mean(dim=(-3, -2, -1)), torch.ones(3, 2))


def test_loss_matches_a_loop_over_pairs():
    obj = objective(pairs=3).eval()  # no dropout draws in the encoder, BatchNorm on its running statistics
    x = torch.rand(6, 3, 24, 24)
    torch.manual_seed(5)
    patches, labels = obj.cut(x)
    patches = standardize(obj.decolor(patches))
    losses = []
    for b in range(6):
        h = [obj.fc6(obj.encoder.pool(obj.encoder.forward_features(patches[b, k][None]))) for k in range(4)]
        for i in range(3):
            logits = obj.head(torch.cat([h[0], h[1 + i]], 1))[0]  # the centre first, then the neighbour
            losses.append(-logits.log_softmax(0)[labels[b, i]])
    torch.manual_seed(5)
    out = obj({"input": x})
    torch.testing.assert_close(out["loss"], torch.stack(losses).mean())
    assert 0 <= out["acc"] <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in obj.parameters())


def test_training_mode_draws_and_learns_with_a_gradient_everywhere():
    obj = objective()
    out = obj({"input": torch.rand(8, 3, 24, 24)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in obj.parameters())


def test_images_too_small_for_the_grid_are_refused():
    obj = objective(patch_size=5, gap=3, jitter=1)  # 3 * 5 + 2 * 3 + 2 = 23 px
    obj({"input": torch.rand(2, 3, 23, 23)})
    with pytest.raises(ValueError, match="at least 23 px"):
        obj({"input": torch.rand(2, 3, 22, 30)})


@pytest.mark.parametrize("override, needle", [("objective.color_mode=sepia", "color_mode must be one of drop"),
                                              ("objective.gap=5", "does not fit the 32 px crop"),
                                              ("objective.patch_size=0", "patch_size >= 1"),
                                              ("objective.pairs=9", "between 1 and 8"),
                                              ("encoder.name=vit", "convnet or resnet")])
def test_bad_relative_position_settings_are_one_config_error(override, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        task, cfg = resolve_config("relative_position_image", None, {"output_dir": str(tmp_path)}, [override])
        task.build_objective(cfg)


def test_the_demo_grid_fills_the_demo_crop(tmp_path):
    task, cfg = resolve_config("relative_position_image", None, {"output_dir": str(tmp_path)}, [])
    obj = task.build_objective(cfg)
    assert obj.min_image_size() == cfg.image_size == 32
    assert obj.color_mode == "drop"  # the paper's figures and released code drop colours
