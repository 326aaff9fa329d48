"""Video data: readers (reader.py), clip sampling (sampler.py), the demo (synthetic.py) and
sources (data.py).

Every video is written by the test into ``tmp_path``; the demo is rendered small (3 train and
2 test scenes of 12 frames) into a temporary cache. Nothing is downloaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmssl.data import train_loader
from mmssl.errors import DataError
from mmssl.evaluation.overlay import davis_palette
from mmssl.modalities.video import (
    DavisRoot,
    SafeClips,
    VideoClips,
    VideoReader,
    VideoReadError,
    available_backends,
    clip_indices,
    demo_root,
    is_davis_root,
    open_videos,
    read_clip,
    read_views,
    render_scene,
    synthetic,
    write_video,
)

BACKENDS = available_backends()
# Measured: the three backends convert YUV 4:2:0 to RGB with the same FFmpeg (swscale) defaults
# and return identical frames here (mean abs difference 0.0); the bound leaves room for builds
# whose rounding differs by a unit or so.
BACKEND_TOLERANCE = 1.0


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture(scope="module")
def scene():
    return render_scene(3, frames=24, size=64)


@pytest.fixture(scope="module")
def video(tmp_path_factory, scene) -> Path:
    """A 24-frame 64x64 H.264 file of a demo scene (near lossless)."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", scene["cam0"], crf=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small demo (3 train + 2 test scenes of 12 frames) rendered into its own cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMSSL_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(synthetic, "NUM_TRAIN", 3)
        mp.setattr(synthetic, "NUM_TEST", 2)
        mp.setattr(synthetic, "FRAMES", 12)
        root = demo_root()
        assert demo_root() == root  # the second call reuses the cache
        yield root


def write_clip(path: Path, seed: int, frames: int = 8, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, render_scene(seed, frames=frames, size=size)["cam0"])


# reader -------------------------------------------------------------------------------------------

def test_backends_agree_and_keep_the_order_asked(video, scene):
    assert {"decord", "pyav"} <= set(BACKENDS)  # both are dependencies; torchcodec is optional
    idx = [0, 5, 3, 23]
    out = {}
    for b in BACKENDS:
        with VideoReader(video, b) as r:
            assert (r.num_frames, r.size, round(r.fps)) == (24, (64, 64), 10)
            out[b] = r.get_batch(idx)
            assert out[b].shape == (4, 3, 64, 64) and out[b].dtype == torch.uint8
            # order and repeats: one frame at a time gives the same frames
            single = torch.cat([r.get_batch([i]) for i in idx])
            assert torch.equal(out[b], single)
            assert torch.equal(r.get_batch([3, 3, 0]), out[b][[2, 2, 0]])
            assert torch.equal(r.get_batch(torch.tensor(idx)), out[b])
    for b in BACKENDS:
        assert (out[b].float() - out["decord"].float()).abs().mean() < BACKEND_TOLERANCE
    # each decoded frame is the rendered frame of that index (4:2:0 chroma costs a few levels)
    rendered = scene["cam0"].float()
    for k, i in enumerate(idx):
        err = (rendered - out["decord"][k].float()).abs().mean(dim=(1, 2, 3))
        assert int(err.argmin()) == i and err[i] < 6


def test_bytes_and_frame_lists_read_like_files(video, tmp_path):
    data = video.read_bytes()
    for b in BACKENDS:
        with VideoReader(video, b) as a, VideoReader(data, b) as m:
            assert m.num_frames == 24 and torch.equal(m.get_batch([1, 20]), a.get_batch([1, 20]))
    frames = VideoReader(video).get_batch(range(6))
    paths = []
    for t in range(6):
        paths.append(tmp_path / f"{t:05d}.png")
        Image.fromarray(frames[t].permute(1, 2, 0).numpy()).save(paths[-1])
    with VideoReader(paths) as r:
        assert r.backend == "frames" and r.num_frames == 6 and r.size == (64, 64)
        assert torch.equal(r.get_batch([4, 1]), frames[[4, 1]])


def test_reader_errors_name_the_file(video, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    for bad in (tmp_path / "missing.mp4", garbage):
        for b in ("auto", *BACKENDS):
            with pytest.raises(VideoReadError, match=bad.name):
                VideoReader(bad, b)
    with pytest.raises(DataError, match="unknown video backend"):
        VideoReader(video, "opencv")
    with VideoReader(video) as r, pytest.raises(IndexError):
        r.get_batch([24])


def test_decord_memory_guard_reopens(video, monkeypatch):
    from mmssl.modalities.video import reader

    opens = []
    original = reader._Decord._open
    monkeypatch.setattr(reader._Decord, "_open", lambda self: (opens.append(1), original(self))[1])
    monkeypatch.setattr(reader, "DECORD_REOPEN_EVERY", 2)
    with VideoReader(video, "decord") as r:
        first = r.get_batch([7, 2])
        for _ in range(5):
            assert torch.equal(r.get_batch([7, 2]), first)
    assert len(opens) == 3  # at open, then before the 3rd and the 5th batch


# sampler ------------------------------------------------------------------------------------------

def test_clip_indices():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        idx = clip_indices(100, 8, 3, g)
        assert idx.dtype == torch.long and idx.shape == (8,)
        assert idx.min() >= 0 and idx.max() < 100 and torch.all(idx.diff() == 3)
        starts.add(int(idx[0]))
    assert len(starts) > 10 and max(starts) <= 100 - 22  # span 7 * 3 + 1 = 22
    a = clip_indices(100, 8, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, clip_indices(100, 8, 3, torch.Generator().manual_seed(5)))
    # too short for stride 3 (span 22): the largest stride that fits, (15 - 1) // 7 = 2
    idx = clip_indices(15, 8, 3, g)
    assert torch.all(idx.diff() == 2) and idx.max() < 15
    assert torch.equal(clip_indices(8, 8, 4, g), torch.arange(8))
    # shorter than the clip: stride 1, the last frame repeated
    assert clip_indices(5, 8, 2, g).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert clip_indices(1, 3, 2, g).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        clip_indices(0, 8, 2, g)


# synthetic ----------------------------------------------------------------------------------------

def test_render_scene_is_deterministic_and_consistent():
    a, b = render_scene(11, frames=16, size=64), render_scene(11, frames=16, size=64)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["cam0"], render_scene(12, frames=16, size=64)["cam0"])
    assert a["cam0"].shape == a["cam1"].shape == (16, 3, 64, 64) and a["masks"].shape == (16, 64, 64)
    assert a["cam0"].dtype == a["masks"].dtype == torch.uint8
    assert (a["cam0"].float() - a["cam1"].float()).abs().mean() > 10  # another crop, zoom and colour


def test_demo_scenes_move_occlude_and_leave_the_frame():
    touches_border, steps = 0, []
    for seed in range(8):
        s = render_scene(seed, frames=40, size=64)
        m = s["masks"]
        assert int(m.max()) <= synthetic.MAX_OBJECTS
        assert (m > 0).flatten(1).any(1).float().mean() >= 0.5  # objects in view in most frames
        border = torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], 1)  # (T, 4 * size)
        touches_border += bool((border > 0).any())
        steps.append((m[1:] != m[:-1]).float().mean())  # the masks change from frame to frame
        # an object's pixels differ in colour from the background's
        rgb = s["cam0"].permute(0, 2, 3, 1).reshape(-1, 3).float()
        labels = m.reshape(-1)
        for k in labels.unique()[1:]:
            assert (rgb[labels == k].mean(0) - rgb[labels == 0].mean(0)).abs().max() > 25
    assert touches_border >= 4 and min(steps) > 0


def test_demo_layout_and_davis_round_trip(demo):
    for split, ids in (("train", range(3)), ("test", range(3, 5))):
        for i in ids:
            assert (demo / "videos" / split / f"scene{i:03d}" / "cam1.mp4").is_file()
    davis_dir = demo / "davis"
    assert is_davis_root(davis_dir)
    assert (davis_dir / "ImageSets" / "2017" / "val.txt").read_text().split() == ["scene003", "scene004"]
    assert (davis_dir / "ImageSets" / "2017" / "train.txt").is_file()
    davis = DavisRoot(davis_dir)
    assert davis.sequences == ["scene003", "scene004"] and len(davis) == 2
    assert davis.palette[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    assert davis_palette()[3 * 255:] == [224, 224, 192]  # the VOC palette's last colour
    item = davis[1]
    rendered = render_scene(4, frames=12, size=synthetic.SIZE)
    assert item["name"] == "scene004" and torch.equal(item["masks"], rendered["masks"])
    assert item["frames"].shape == (12, 3, 128, 128)
    assert (item["frames"].float() - rendered["cam0"].float()).abs().mean() < 4  # JPEG quality 95
    with Image.open(davis_dir / "Annotations" / "480p" / "scene004" / "00000.png") as png:
        assert png.mode == "P"
    assert davis.annotated("scene004") == list(range(12))


def test_davis_root_errors_and_first_frame_annotations(tmp_path):
    from mmssl.modalities.video.synthetic import write_davis_sequence

    s = render_scene(0, frames=6, size=32)
    root = tmp_path / "davis"
    write_davis_sequence(root, "a", s["cam0"], s["masks"])
    write_davis_sequence(root, "b", s["cam0"], s["masks"])
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("a\nb\n")
    (sets / "missing.txt").write_text("a\nnope\n")
    with pytest.raises(DataError, match="test-dev.txt; splits: missing, val"):
        DavisRoot(root, "test-dev")
    with pytest.raises(DataError, match="nope"):
        DavisRoot(root, "missing")
    with pytest.raises(DataError, match="not a DAVIS root"):
        DavisRoot(tmp_path / "davis" / "JPEGImages")
    for t in range(1, 6):  # test-dev style: only the first frame annotated
        (root / "Annotations" / "480p" / "b" / f"{t:05d}.png").unlink()
    davis = DavisRoot(root)
    assert davis.annotated("b") == [0] and davis.masks("b").shape == (1, 32, 32)
    assert torch.equal(davis.masks("b")[0], s["masks"][0]) and davis.frames("b").shape == (6, 3, 32, 32)
    (root / "Annotations" / "480p" / "a" / "00003.png").unlink()  # a dense sequence missing one mask
    with pytest.raises(DataError, match="6 frames but 5 annotations"):
        davis.masks("a")


# sources ------------------------------------------------------------------------------------------

def test_open_demo_is_multi_view(demo, monkeypatch):
    monkeypatch.setenv("MMSSL_CACHE", str(demo.parent))
    source = open_videos("demo", "train")
    assert len(source) == 3 and source.num_views == 2 and source.skipped == []
    item = source[1]
    assert item["name"] == "scene001" and item["index"] == 1 and item["video"] == item["views"][0]
    assert [Path(v).name for v in item["views"]] == ["cam0.mp4", "cam1.mp4"]
    out = read_views(item, 4, 2, torch.Generator().manual_seed(0))
    assert out["frames"].shape == (2, 4, 3, 128, 128) and torch.all(out["indices"].diff() == 2)
    again = read_views(item, 4, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out["frames"], again["frames"])
    assert len(open_videos("demo", "test")) == 2
    with pytest.raises(DataError, match="train, test"):
        open_videos("demo", "validation")


def test_open_local_folder_single_and_multi_view(tmp_path):
    root = tmp_path / "videos"
    write_clip(root / "train" / "walk" / "a.mp4", 0)
    write_clip(root / "train" / "walk" / "b.mkv", 1)
    write_clip(root / "train" / "run" / "scene" / "cam0.mp4", 2)
    write_clip(root / "train" / "run" / "scene" / "cam1.mp4", 3)
    write_clip(root / "test" / "run" / "c.mp4", 4)
    source = open_videos(str(root), "train", label_column="label")
    names = [source[i]["name"] for i in range(len(source))]
    assert names == ["run/scene", "walk/a.mp4", "walk/b.mkv"] and source.num_views == 2
    assert source.vocab == ["run", "walk"] and [source[i]["label"] for i in range(3)] == [0, 1, 1]
    assert len(source[0]["views"]) == 2 and len(source[1]["views"]) == 1
    clip = read_clip(source[1]["video"], 4, 2, torch.Generator().manual_seed(0))
    assert clip["frames"].shape == (4, 3, 32, 32) and clip["num_frames"] == 8
    test = open_videos(str(root), "test", label_column="label", vocab=["walk", "run"])
    assert len(test) == 1 and test[0]["label"] == 1  # indices follow the vocab given (the training split's)
    with pytest.raises(DataError, match="no split 'validation'; it has: test, train"):
        open_videos(str(root), "validation")
    flat = open_videos(str(root / "train" / "walk"), "train")  # no split folders: every video
    assert len(flat) == 2 and "label" not in flat[0]
    with pytest.raises(DataError, match="no such folder"):
        open_videos(str(tmp_path / "nowhere"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no videos"):
        open_videos(str(tmp_path / "empty"), "train")


def test_open_hf_datasets_with_paths_and_bytes(tmp_path):
    import datasets

    paths = [str(write_clip(tmp_path / "v" / f"{k}.mp4", k)) for k in range(3)]
    datasets.Dataset.from_dict({"video": paths, "label": ["b", "a", "b"]}).save_to_disk(str(tmp_path / "by_path"))
    source = open_videos(str(tmp_path / "by_path"), "train", label_column="label")
    assert len(source) == 3 and source.vocab == ["a", "b"] and source[0]["label"] == 1
    assert source[2]["video"] == paths[2] and source.num_views == 1

    blobs = [Path(p).read_bytes() for p in paths]
    datasets.Dataset.from_dict({"clip": blobs}).save_to_disk(str(tmp_path / "by_bytes"))
    source = open_videos(str(tmp_path / "by_bytes"), "train", video_column="clip")
    assert isinstance(source[0]["video"], bytes)
    clip = read_clip(source[0]["video"], 3, 1, torch.Generator().manual_seed(0))
    assert clip["frames"].shape == (3, 3, 32, 32)
    with pytest.raises(DataError, match="no column 'video'.*columns: clip"):
        open_videos(str(tmp_path / "by_bytes"), "train")


def test_open_davis_root_as_videos(tmp_path):
    from mmssl.modalities.video.synthetic import write_davis_sequence

    s = render_scene(0, frames=5, size=32)
    write_davis_sequence(tmp_path, "seq", s["cam0"], s["masks"])
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("seq\n")
    source = open_videos(str(tmp_path), "val")
    assert len(source) == 1 and source[0]["name"] == "seq" and len(source[0]["video"]) == 5
    clip = read_clip(source[0]["video"], 3, 2, torch.Generator().manual_seed(0))
    assert clip["indices"].tolist() == [0, 2, 4] and clip["frames"].shape == (3, 3, 32, 32)
    assert len(open_videos(str(tmp_path), "test")) == 1  # DAVIS calls its held-out split "val"
    frames = DavisRoot(tmp_path)[0]["frames"]  # decoded frames are a video too
    clip = read_clip(frames, 2, 1, torch.Generator().manual_seed(1))
    assert torch.equal(clip["frames"], frames[clip["indices"]])


# broken videos ------------------------------------------------------------------------------------

@pytest.fixture
def broken_folder(tmp_path) -> Path:
    root = tmp_path / "mixed"
    for k in range(3):
        write_clip(root / f"good{k}.mp4", k)
    data = write_clip(tmp_path / "whole.mp4", 9).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    return root


def test_broken_videos_are_skipped_with_one_warning(broken_folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_videos(str(broken_folder), "train")
    assert len(source) == 3 and sorted(source.skipped) == ["garbage.mp4", "truncated.mp4"]
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1 and "skipped 2 of 5 videos that cannot be read" in messages[0]
    assert "garbage.mp4" in messages[0] and "truncated.mp4" in messages[0]
    for k in range(3):
        (broken_folder / f"good{k}.mp4").write_bytes(b"gone bad")
    with pytest.raises(DataError, match="none of its 5 videos can be read"):
        open_videos(str(broken_folder), "train")


def _clip_of(item, generator):
    return {"frames": read_clip(item["video"], 4, 1, generator)["frames"].float(), "index": item["index"]}


def test_safe_clips_substitutes_a_video_that_fails_later(broken_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = open_videos(str(broken_folder), "train")
    (broken_folder / "good1.mp4").unlink()  # fails only when read
    safe = SafeClips(source, _clip_of)
    with pytest.warns(UserWarning, match="good1.mp4.*using item 2"):
        out = safe(source[1], torch.Generator().manual_seed(3))
    assert out["index"] == 2
    expected = _clip_of(source[2], torch.Generator().manual_seed(3))
    assert torch.equal(out["frames"], expected["frames"])  # the substitute is read with the rewound generator
    assert safe(0, torch.Generator().manual_seed(3))["index"] == 0

    # inside a DataLoader worker: batches keep coming
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = train_loader(source, safe, batch_size=3, world=1, rank=0, seed=0, num_workers=1)
        batches = iter(loader)
        for _ in range(2):
            batch = next(batches)
            assert batch["frames"].shape == (3, 4, 3, 32, 32) and 1 not in batch["index"].tolist()
        del batches, loader

    for k in (0, 2):
        (broken_folder / f"good{k}.mp4").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="3 videos in a row"):
            SafeClips(source, _clip_of, max_failures=3)(source[0], torch.Generator())


def test_auto_backend_falls_through_when_one_cannot_decode(tmp_path):
    """decord opens a 48 px wide H.264 stream but fails to decode it (its frame buffer is padded to
    64 px); "auto" then reads it with the next backend instead of giving up."""
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (10, 3, 48, 48), dtype=np.uint8))
    path = write_video(tmp_path / "narrow.mp4", frames, crf=4)
    with VideoReader(path) as auto:
        got = auto.get_batch([0, 9])
        assert got.shape == (2, 3, 48, 48)
        others = [b for b in BACKENDS if b != "decord"]
        if others:
            with VideoReader(path, others[0]) as ref:
                assert (got.float() - ref.get_batch([0, 9]).float()).abs().mean() < BACKEND_TOLERANCE


# clip slots ---------------------------------------------------------------------------------------

def test_clip_slots_follow_each_videos_frames_and_map_back(tmp_path):
    for k, frames in enumerate((24, 8, 13)):
        write_clip(tmp_path / "v" / f"{k}.mp4", k, frames=frames)
    source = open_videos(str(tmp_path / "v"), "train")
    assert [source.num_frames(i) for i in range(3)] == [24, 8, 13]
    clips = VideoClips(source, 0, span=6)  # 24 // 6, 8 // 6, 13 // 6
    assert clips.clips == [4, 1, 2] and len(clips) == 7
    assert [(clips[i]["video_index"], clips[i]["clip_slot"]) for i in range(7)] == \
        [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (2, 1)]
    assert clips[5]["video"] == source[1 + 1]["video"] and clips[5]["index"] == 5
    assert VideoClips(source, 3, span=100).clips == [3, 3, 3]
    assert VideoClips(source, 0, span=100).clips == [1, 1, 1]  # shorter than a clip: still one
    with pytest.raises(DataError, match="clips_per_video"):
        VideoClips(source, -1, span=6)


def test_clip_slots_are_deterministic_resume_exactly_and_differ_in_start(tmp_path):
    """Two videos, 8 slots each, batches of 4: the slots of one video draw different clip starts
    from their own generators, and a loader resumed at batch 3 yields what the first one did."""
    for k in range(2):
        write_clip(tmp_path / "v" / f"{k}.mp4", k, frames=40)
    clips = VideoClips(open_videos(str(tmp_path / "v"), "train"), 8, span=4)

    def start(item, gen):
        return {"start": read_clip(item["video"], 4, 1, gen)["indices"][0], "video": item["video_index"]}

    def batches(first, n):
        it = iter(train_loader(clips, start, batch_size=4, world=1, rank=0, seed=5, start_batch=first))
        return [next(it) for _ in range(n)]

    run = batches(0, 6)
    resumed = batches(3, 3)
    for a, b in zip(run[3:], resumed):
        assert torch.equal(a["start"], b["start"]) and torch.equal(a["video"], b["video"])
    starts = torch.cat([b["start"] for b in run[:4]])  # one pass: all 16 slots
    videos = torch.cat([b["video"] for b in run[:4]])
    assert sorted(videos.tolist()) == [0] * 8 + [1] * 8
    assert len(set(starts[videos == 0].tolist())) > 2  # the slots of a video are different clips


def test_safe_clips_skip_every_slot_of_a_broken_video(broken_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clips = VideoClips(open_videos(str(broken_folder), "train"), 3, span=1)
    (broken_folder / "good1.mp4").unlink()
    safe = SafeClips(clips, _clip_of)
    with pytest.warns(UserWarning, match="good1.mp4.*using item 6"):
        out = safe(clips[4], torch.Generator().manual_seed(3))  # video 1's second slot -> video 2's first
    assert out["index"] == 6
