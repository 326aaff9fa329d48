"""DenseCL really learns: on stripes whose orientation is the label and whose colours and phase are
noise, a short run of a small conv net (a 2x2 final map: four locations per view, each matched to
the other view's most similar one) gives features whose kNN names the orientation better than the
same net untrained and than raw pixels."""
import pytest
from image_learning import assert_beats_random_and_pixels, knn_after_training, reading
from tiny_images import StripeImages

pytestmark = pytest.mark.slow  # trains for tens of seconds

STEPS = 300
# Queues of 1,024 keys (8 steps of 128): the 512 training images' keys from an encoder a few steps old.
OVERRIDES = ["objective.queue_size=1024", "objective.dense_queue_size=1024", "objective.proj_hidden=128"]


def test_short_run_beats_random_encoder_and_pixels_on_knn(tmp_path):
    task = reading("densecl_image", StripeImages(512, "train", seed=0), StripeImages(256, "test", seed=1))
    _, knn = knn_after_training(task, tmp_path / "run", STEPS, ["image_size=16", *OVERRIDES])
    assert_beats_random_and_pixels(knn)
