"""Jigsaw puzzles: the permutation set (the paper's Algorithm 1), the tiles, the loss against a plain
loop, and what a run saves."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from tiny_images import TinyEncoder

from mmssl.config import ConfigError
from mmssl.objectives.jigsaw import Jigsaw, cut_tiles, hamming_permutations
from mmssl.run import resolve_config


def reference_permutations(count, n, first):
    """Algorithm 1 written plainly: add the permutation with the largest summed Hamming distance to
    the chosen ones, the first in lexicographic order on ties."""
    every = list(itertools.permutations(range(n)))
    chosen = [every[first]]
    while len(chosen) < count:
        best, best_total = None, -1
        for p in every:
            if p in chosen:
                continue
            total = sum(sum(a != b for a, b in zip(p, q)) for q in chosen)
            if total > best_total:
                best, best_total = p, total
        chosen.append(best)
    return torch.tensor(chosen)


def test_permutations_follow_algorithm_1_and_are_deterministic():
    perms = hamming_permutations(12, n=5, seed=3)
    every = list(itertools.permutations(range(5)))
    first = every.index(tuple(perms[0].tolist()))
    assert torch.equal(perms, reference_permutations(12, 5, first))
    assert torch.equal(perms, hamming_permutations(12, n=5, seed=3))
    assert not torch.equal(perms, hamming_permutations(12, n=5, seed=4))


def test_the_default_set_is_100_distinct_permutations_starting_with_a_latin_square():
    perms = hamming_permutations(100)
    assert perms.shape == (100, 9) and len({tuple(p) for p in perms.tolist()}) == 100
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(100, 9))
    # while a permutation that differs from every chosen one in all 9 places exists, the summed
    # distance picks it: the first 9 differ pairwise everywhere (a Latin square), then no such one is left
    distance = (perms[:, None] != perms[None]).sum(-1)
    assert (distance[:9, :9] + 9 * torch.eye(9, dtype=torch.long) == 9).all()
    with pytest.raises(ValueError, match="between 1 and"):
        hamming_permutations(0)


def test_tiles_are_the_cells_crops_with_each_channel_shifted():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 30, 30, generator=g)
    offsets = torch.randint(0, 3, (2, 9, 2), generator=g)
    shifts = torch.randint(-2, 3, (2, 9, 3, 2), generator=g)
    tiles = cut_tiles(x, 3, 8, offsets, shifts)
    assert tiles.shape == (2, 9, 3, 8, 8)
    for b, k, c in itertools.product(range(2), range(9), range(3)):
        top = 10 * (k // 3) + offsets[b, k, 0] + shifts[b, k, c, 0]
        left = 10 * (k % 3) + offsets[b, k, 1] + shifts[b, k, c, 1]
        rows = (top + torch.arange(8)).clamp(0, 29)
        cols = (left + torch.arange(8)).clamp(0, 29)
        assert torch.equal(tiles[b, k, c], x[b, c][rows][:, cols])


def test_puzzle_shuffles_the_cells_by_the_labelled_permutation():
    """With whole cells as tiles, putting tile j back at cell permutations[label, j] gives the image."""
    obj = Jigsaw(TinyEncoder(), num_permutations=20, tile_ratio=1.0, channel_shift=0, tile_dim=4, hidden=8)
    x = torch.rand(3, 3, 12, 12)
    tiles, labels = obj.puzzle(x)
    cells = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 3, 3, 4, 4)
    cells = cells.permute(0, 2, 3, 1, 4, 5).reshape(3, 9, 3, 4, 4)
    for b in range(3):
        order = obj.permutations[labels[b]]
        expected = cells[b, order]
        for j in range(9):  # each tile standardised on its own
            expected[j] = (expected[j] - expected[j].mean()) / expected[j].std()
        torch.testing.assert_close(tiles[b], expected)


def test_loss_matches_a_loop_over_tiles():
    obj = Jigsaw(TinyEncoder(), num_permutations=10, tile_dim=4, hidden=8).eval()  # no dropout draws
    x = torch.rand(4, 3, 30, 30)
    torch.manual_seed(5)
    tiles, labels = obj.puzzle(x)
    features = [obj.tile_proj(obj.encoder.pool(obj.encoder.forward_features(tiles[:, k]))) for k in range(9)]
    expected = F.cross_entropy(obj.head(torch.cat(features, 1)), labels)
    torch.manual_seed(5)
    out = obj({"input": x})
    torch.testing.assert_close(out["loss"], expected)
    assert 0 <= out["acc"] <= 1
    out["loss"].backward()
    assert all(p.grad is not None for p in obj.parameters())


def test_the_permutation_set_is_a_checkpoint_buffer_and_travels_with_the_encoder(tmp_path):
    task, cfg = resolve_config("jigsaw_image", None, {"output_dir": str(tmp_path)},
                               ["objective.num_permutations=7", "objective.tile_dim=8", "objective.hidden=8"])
    obj = task.build_objective(cfg)
    assert obj.state_dict()["permutations"].shape == (7, 9)
    assert task.encoder_meta(cfg)["jigsaw_permutations"] == obj.permutations.tolist()


@pytest.mark.parametrize("override, needle", [("objective.num_permutations=0", "between 1 and"),
                                              ("objective.grid=1", "grid >= 2"),
                                              ("encoder.name=vit", "convnet or resnet")])
def test_bad_jigsaw_settings_are_one_config_error(override, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        task, cfg = resolve_config("jigsaw_image", None, {"output_dir": str(tmp_path)}, [override])
        task.build_objective(cfg)
