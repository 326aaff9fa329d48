"""cpc_video really learns: on clips of a sine grating whose direction (the class) stays while its
period, phase and colours change from frame to frame, the direction is all that one frame says about
the next ones. A short run of the task (pooled frame features, GRU context, 3 frames ahead: its
defaults) gives frame features that name the direction by kNN far better than the same frame encoder
untrained and than raw pixels, which mostly see the colours. CPC's claim, as the speaker probe checks
it on audio: the features keep what persists in time. Training clips are drawn afresh for every item:
with a fixed set of a few hundred clips the context learns their colour sequences by heart instead."""
import math

import pytest
import torch

from mmssl.evaluation.knn import knn_classify, read_out
from mmssl.modalities.video.views import decode_view
from mmssl.registry import TASKS
from mmssl.run import resolve_config
from mmssl.tasks.cpc_video import CPCVideoTask
from mmssl.trainer import train

pytestmark = pytest.mark.slow  # trains for about 20 seconds on an idle machine

SIZE, FRAMES = 32, 8
DIRECTIONS = (0.0, 45.0, 90.0, 135.0)  # the classes, in degrees


def flicker_clip(direction: int, g: torch.Generator) -> torch.Tensor:
    """One clip, uint8 (FRAMES, 3, SIZE, SIZE): a sine grating at DIRECTIONS[direction] degrees (+-10
    degrees, drawn per frame) whose period (3-6 px), phase and two colours are drawn anew every frame,
    with pixel noise."""
    angle = torch.deg2rad(DIRECTIONS[direction] + 20 * (torch.rand(FRAMES, generator=g) - 0.5))[:, None, None]
    period = (3 + 3 * torch.rand(FRAMES, generator=g))[:, None, None]
    phase = (2 * math.pi * torch.rand(FRAMES, generator=g))[:, None, None]
    y, x = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    wave = ((torch.sin(2 * math.pi * (y * torch.cos(angle) - x * torch.sin(angle)) / period + phase) + 1) / 2)[:, None]
    ink, paper = 255 * torch.rand(2, FRAMES, 3, 1, 1, generator=g)
    frames = ink * wave + paper * (1 - wave) + 10 * torch.randn(FRAMES, 1, SIZE, SIZE, generator=g)
    return frames.clamp(0, 255).to(torch.uint8)


class FlickerClips:
    """n clips of ``flicker_clip``, clip i of direction i % 4: the probe's sets (training draws every
    clip afresh)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % len(DIRECTIONS)
        self.clips = torch.stack([flicker_clip(int(c), g) for c in self.labels])  # (n, T, 3, S, S)


@TASKS.register("tiny_flicker_cpc_video")
class FlickerCPCVideo(CPCVideoTask):
    """cpc_video on ``flicker_clip`` clips drawn in memory instead of decoded from video files."""

    name = "tiny_flicker_cpc_video"

    def source(self, cfg, split):
        return [{"label": i % len(DIRECTIONS)} for i in range(256)]  # each item's clip is drawn afresh

    def make_item(self, cfg):
        def item(entry: dict, gen: torch.Generator) -> dict:
            frames, view = decode_view(flicker_clip(entry["label"], gen), cfg.decode_size, cfg.min_scale, gen)
            return {"frames": frames, "view": view}

        return item


def frame_features(featurize, clips: FlickerClips) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of every clip, one row each, with its clip's label."""
    frames = clips.clips.flatten(0, 1).float() / 255  # (n * T, 3, S, S)
    return featurize(frames), clips.labels.repeat_interleave(FRAMES)


def test_short_cpc_video_run_beats_random_encoder_and_pixels_on_knn(tmp_path):
    from accelerate import Accelerator

    from mmssl.modalities.vision import normalize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads on a busy machine mostly wait on each other
    try:
        task, cfg = resolve_config(
            "tiny_flicker_cpc_video", None, {"output_dir": str(tmp_path / "run"), "max_steps": 400},
            ["num_workers=0", "log_every=50", "save_every=1000", "frame_size=32", "decode_size=32", "frame_stride=1",
             "clips_per_video=1", "encoder.dense_convnet.widths=16,32,64"])
        objective, _ = train(task, cfg, Accelerator(cpu=True))
        encoder = objective.export_encoder().eval()
        random = task.random_encoder(cfg, encoder)
        train_set, test_set = FlickerClips(256, seed=1), FlickerClips(128, seed=2)
        knn = {}
        with torch.no_grad():
            for name, featurize in (("cpc", lambda x: read_out(encoder, normalize(x))),
                                    ("random", lambda x: read_out(random, normalize(x))),
                                    ("pixels", lambda x: normalize(x).flatten(1))):
                knn[name] = knn_classify(*frame_features(featurize, train_set), *frame_features(featurize, test_set),
                                         ks=(20,))[20]
    finally:
        torch.set_num_threads(threads)
    print(knn)
    # 0.77-0.98 at seeds 1 and 2 against 0.52 for the random encoder and 0.45 for pixels (chance 0.25)
    assert knn["cpc"] > knn["random"] + 0.15, knn
    assert knn["cpc"] > knn["pixels"] + 0.15, knn
