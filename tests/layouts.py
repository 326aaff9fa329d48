"""Build, offline and in a temporary folder, every on-disk layout ``datasets.load_dataset`` opens,
for each modality: audio as embedded bytes, images as embedded bytes, videos as file paths.

``write_layout(kind, modality, root, n_train, n_test)`` returns the path to pass as ``--dataset``
(for "hub_cache": the Hub id, with the cache under ``root / "hub"``; point HF_HUB_CACHE there).
Every layout has a train and a test split, a ClassLabel ``label`` column (two classes, alternating)
and, for audio, a ``speaker_id`` column.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

LAYOUTS = ("snapshot", "snapshot_readme", "parquet", "arrow", "csv", "jsonl", "save_to_disk", "hub_cache")
HUB_ID = "someone/tiny-set"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def wav_bytes(k: int, seconds: float = 0.4) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 180.0 if k % 2 == 0 else 420.0
    wav = 0.4 * np.sin(2 * np.pi * f0 * (1 + 0.01 * k) * t) + 0.02 * np.random.default_rng(k).standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def png_bytes(k: int, size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(k).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_videos(folder: Path, n: int, offset: int, frames: int = 8, size: int = 32) -> list[Path]:
    from mmssl.modalities.video import render_scene, write_video

    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"v{offset + k}.mp4", render_scene(offset + k, frames=frames, size=size)["cam0"])
            for k in range(n)]


def _split(modality: str, root: Path, n: int, offset: int, media_dir: Path | None) -> dict:
    """One split's columns; a video split (or any split with ``media_dir``) holds paths relative to root."""
    labels = [(offset + k) % 2 for k in range(n)]
    if modality == "audio":
        if media_dir is not None:
            media_dir.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                (media_dir / f"a{offset + k}.wav").write_bytes(wav_bytes(offset + k))
            column = [(media_dir / f"a{offset + k}.wav").relative_to(root).as_posix() for k in range(n)]
        else:
            column = [{"bytes": wav_bytes(offset + k), "path": f"a{offset + k}.wav"} for k in range(n)]
        return {"audio": column, "speaker_id": [f"spk{lab}" for lab in labels], "label": labels}
    if modality == "image":
        if media_dir is not None:
            media_dir.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                (media_dir / f"i{offset + k}.png").write_bytes(png_bytes(offset + k))
            column = [(media_dir / f"i{offset + k}.png").relative_to(root).as_posix() for k in range(n)]
        else:
            column = [{"bytes": png_bytes(offset + k), "path": f"i{offset + k}.png"} for k in range(n)]
        return {"image": column, "label": labels}
    paths = write_videos(media_dir or root / "videos", n, offset)
    return {"video": [p.relative_to(root).as_posix() for p in paths], "label": labels}


def _features(modality: str, embedded: bool):
    import datasets

    from mmssl.sources import PathAudio

    media = {"audio": PathAudio(), "image": datasets.Image()}.get(modality) if embedded else None
    feats = {modality: media or datasets.Value("string"), "label": datasets.ClassLabel(names=["even", "odd"])}
    if modality == "audio":
        feats["speaker_id"] = datasets.Value("string")
    return datasets.Features(feats)


def _dataset(modality: str, root: Path, n: int, offset: int, embedded: bool):
    import datasets

    media_dir = None if embedded and modality != "video" else root / "media"
    return datasets.Dataset.from_dict(_split(modality, root, n, offset, media_dir), features=_features(modality, embedded))


def write_layout(kind: str, modality: str, root: Path, n_train: int = 6, n_test: int = 4) -> str:
    import datasets
    import pyarrow as pa

    root.mkdir(parents=True, exist_ok=True)
    splits = {"train": (n_train, 0), "test": (n_test, 1000)}
    if kind in ("snapshot", "snapshot_readme", "hub_cache"):
        folder = root / "hub" / f"datasets--{HUB_ID.replace('/', '--')}" / "snapshots" / COMMIT if kind == "hub_cache" \
            else root / kind
        for split, (n, offset) in splits.items():
            data = folder / "data"
            data.mkdir(parents=True, exist_ok=True)
            _dataset(modality, folder, n, offset, True).to_parquet(str(data / f"{split}-00000-of-00001.parquet"))
        if kind == "snapshot_readme":  # a README config, as the Hub writes it, naming the files of each split
            (folder / "README.md").write_text(
                "---\nconfigs:\n- config_name: clean\n  data_files:\n  - split: train\n    path: data/train-*\n"
                "  - split: test\n    path: data/test-*\n---\n# a tiny set\n")
        if kind == "hub_cache":
            refs = root / "hub" / f"datasets--{HUB_ID.replace('/', '--')}" / "refs"
            refs.mkdir(parents=True, exist_ok=True)
            (refs / "main").write_text(COMMIT)
            return HUB_ID
        return str(folder)
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "save_to_disk":
        datasets.DatasetDict({s: _dataset(modality, folder, n, o, True) for s, (n, o) in splits.items()}) \
            .save_to_disk(str(folder))
        return str(folder)
    for split, (n, offset) in splits.items():
        ds = _dataset(modality, folder, n, offset, kind in ("parquet", "arrow"))
        if kind == "parquet":
            ds.to_parquet(str(folder / f"{split}.parquet"))
        elif kind == "arrow":  # the Arrow streaming format datasets itself writes
            table = ds.data.table
            with pa.OSFile(str(folder / f"{split}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
        elif kind == "csv":
            ds.to_csv(str(folder / f"{split}.csv"), index=False)
        elif kind == "jsonl":
            ds.to_json(str(folder / f"{split}.jsonl"))
        else:
            raise ValueError(kind)
    return str(folder)
