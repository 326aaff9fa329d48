"""Relative position really learns: on images whose class is the orientation of a few bars, with
their places and colours as noise, a short run of a small conv net gives features whose kNN names
the orientation better than the same net untrained and than raw pixels.

The images are BarImages, not StripeImages: on periodic stripes the task has almost no answer
(a patch's neighbour along the stripes looks like it, one across looks like it shifted by an
unknown fraction of a random period, and the jitter moves it by a good part of a period), so the
loss stays at ln 8 and the encoder stays near its random start. Bars continue along their
direction and nothing repeats across them, so a pair's layout shows their orientation.
"""
import pytest
from image_learning import assert_beats_random_and_pixels, knn_after_training, reading
from tiny_images import BarImages

pytestmark = pytest.mark.slow  # each test trains for tens of seconds

# Steps of batch 64 and overrides: one neighbour per centre (the paper's pairs), or all 8, which
# learn in fewer steps. The image tasks' lr 1e-3 is too slow for single pairs in 400 steps. Single
# pairs at 400 steps ended 0.4 to 20 points above pixels over seeds 0-2 and two view streams; at 600
# steps seeds 0, 1 and 2 gave kNN 62.5 / 61.7 / 66.4 against pixels' 51.2.
RUNS = {"single_pairs": (600, ["objective.pairs=1"]), "all_neighbours": (200, ["objective.pairs=8"])}
NAME = "relative_position_image"


@pytest.mark.parametrize("run", sorted(RUNS))
def test_short_run_beats_random_encoder_and_pixels_on_knn(run, tmp_path):
    steps, overrides = RUNS[run]
    # 32 px BarImages for every split: the demo's grid of patches fills 32 px
    task = reading(NAME, BarImages(512, "train", seed=0), BarImages(256, "test", seed=1))
    _, knn = knn_after_training(task, tmp_path / "run", steps, ["image_size=32", "lr=3e-3", *overrides])
    assert_beats_random_and_pixels(knn)
