"""DenseCL really learns: on stripes whose orientation is the label and whose colours and phase are
noise, a short run of a small conv net (a 2x2 final map: four locations per view, each matched to
the other view's most similar one) gives features whose kNN names the orientation better than the
same net untrained and than raw pixels."""
import pytest
from tiny_images import StripeImages

from mmssl.encoders.io import load_encoder
from mmssl.evaluation.vision import image_probes
from mmssl.run import resolve_config, run_training
from mmssl.tasks.densecl_image import DenseCLImage

pytestmark = pytest.mark.slow  # trains for tens of seconds

STEPS = 300
# Queues of 1,024 keys (8 steps of 128): the 512 training images' keys from an encoder a few steps old.
OVERRIDES = ["objective.queue_size=1024", "objective.dense_queue_size=1024", "objective.proj_hidden=128"]


class OnStripes(DenseCLImage):
    def source(self, cfg, split, labels=False, vocab=None):
        return StripeImages(512, "train", seed=0) if split == "train" else StripeImages(256, "test", seed=1)


def test_short_run_beats_random_encoder_and_pixels_on_knn(tmp_path):
    name = "densecl_image"
    _, cfg = resolve_config(name, None, {"output_dir": str(tmp_path / "run"), "max_steps": STEPS},
                            ["num_workers=0", "monitor_every=0", "log_every=50", "save_every=1000", "evaluate=false",
                             "image_size=16", "encoder.convnet.widths=16,32,64", "batch_size=64", "eval_split=test",
                             *OVERRIDES])
    task = OnStripes()
    run_training(task, cfg)
    encoder = load_encoder(tmp_path / "run").eval()
    train, test = task.labelled_splits(cfg)
    # kNN only (k = 20), the image report's protocol and columns without its linear probe and plots
    report = image_probes({name: encoder, "random": task.random_encoder(cfg, encoder)}, train, test,
                          task.eval_view(cfg), ks=(20,), linear=False, seed=cfg.seed, random_init_seed=cfg.seed + 1)
    knn = {column: by_k[20] for column, by_k in report["knn"].items()}
    print(name, knn)
    assert knn[name] > knn["random"] + 0.08, knn
    assert knn[name] > knn["pixels"] + 0.03, knn
