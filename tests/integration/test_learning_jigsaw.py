"""Jigsaw puzzles really learn: on the embedded demo's shapes (a shape whose class is the label, of random
colour, scale, tilt and place, over a patterned background), a short run gives features on which the
linear probe names the shape far better than on the same net untrained and on raw pixels.

A tile can only tell where it sits when the picture has a layout (an object with its outline around
it, a horizon). Stripes and bars, the other learning tests' images, look alike in every tile, and
there the puzzle stays at chance (loss ln 100; docs/results/image.md). The run uses 10 permutations
instead of the paper's 100: the same maximal-Hamming set, solved within 600 steps (the 100-permutation
puzzle on this small net stays near ln 100 that long, and on the demo's net starts to fall after a
few hundred steps). The assertion is on the linear probe, the modality's probe: the kNN also passes
the random encoder, but not raw pixels at this size.

The margin moves with the run: at 600 steps seeds 0-2 gave linear 23.4 / 30.0 / 25.4 against the
random encoder's 18.6 / 18.4 / 23.4 (and 28.2 / 29.8 / 29.0 with another stream of views), and at 1000
steps seed 0 read 25.2, 27.6 and 23.2 in three runs of the same code (thread counts change the sums'
order, and the run follows). One run's margin (4.6 to 14 points seen) is too thin to assert on, so
the test trains seeds 0 and 1 for 600 steps each and asserts on their mean: 28.0 / 30.4 against 18.6
/ 18.4 when this was written."""
import pytest
from image_learning import assert_beats_random_and_pixels, reading, scores_after_training
from tiny_images import ShapeImages

pytestmark = pytest.mark.slow  # trains for tens of seconds


def test_short_runs_beat_random_encoder_and_pixels_on_the_linear_probe(tmp_path):
    task = reading("jigsaw_image", ShapeImages(100, "train", seed=5), ShapeImages(50, "test", seed=6))
    knn, linear = {}, {}
    for seed in (0, 1):
        _, k, lin = scores_after_training(task, tmp_path / f"run{seed}", 600, [
            "image_size=32", "lr=3e-3", "objective.num_permutations=10", f"seed={seed}"], linear=True)
        for into, scores in ((knn, k), (linear, lin)):
            for column, value in scores.items():
                into[column] = into.get(column, 0.0) + value / 2
    assert_beats_random_and_pixels(linear, random_by=0.05, pixels_by=0.05)
    assert knn["trained"] > knn["random"] + 0.03, knn
