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

The margin depends on the seed: at 600 steps seeds 0-2 gave linear 23.4 / 30.0 / 25.4 against the
random encoder's 18.6 / 18.4 / 23.4 (and 28.2 / 29.8 / 29.0 with another stream of views); at the
1000 steps run here, 25.2 / 29.0 / 26.4, so seed 2, whose random encoder is strong, passes its random
encoder by 3.0 points only, under the 5 this test asks of seed 0."""
import pytest
from image_learning import assert_beats_random_and_pixels, reading, scores_after_training
from tiny_images import ShapeImages

pytestmark = pytest.mark.slow  # trains for tens of seconds


def test_short_run_beats_random_encoder_and_pixels_on_the_linear_probe(tmp_path):
    task = reading("jigsaw_image", ShapeImages(100, "train", seed=5), ShapeImages(50, "test", seed=6))
    _, knn, linear = scores_after_training(task, tmp_path / "run", 1000, [
        "image_size=32", "lr=3e-3", "objective.num_permutations=10"], linear=True)
    assert_beats_random_and_pixels(linear, random_by=0.05, pixels_by=0.05)
    assert knn["trained"] > knn["random"] + 0.03, knn
