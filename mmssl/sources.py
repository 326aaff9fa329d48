"""Open a dataset split from the Hugging Face Hub or a local folder, with one-line errors.

A local folder is opened the way ``datasets.load_dataset(path)`` opens it when it holds data
files (parquet, arrow, csv, tsv, json, jsonl: a Hub snapshot, an export, a table of file paths,
with or without a README.md whose YAML names configs and splits), as ``load_from_disk`` when it
is a ``save_to_disk`` folder, and otherwise as raw media (audiofolder / imagefolder; the video
modality reads its own folders). A Hub id already in the local Hub cache opens offline.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from mmssl.errors import DataError

TABLE_EXTENSIONS = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl")
METADATA_STEMS = ("metadata",)  # audiofolder / imagefolder read metadata.csv / .jsonl beside the media


def looks_like_path(spec: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else is meant as a path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def is_saved_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def is_table_folder(path: Path) -> bool:
    """True when ``datasets.load_dataset(path)`` reads ``path`` as tables: it holds data files other
    than a media folder's metadata file, or a README.md whose YAML header declares ``configs``."""
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if text.startswith("---") and "\nconfigs:" in text.split("\n---", 1)[0]:
            return True
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = Path(f)
            if p.suffix.lower() in TABLE_EXTENSIONS and p.stem.lower() not in METADATA_STEMS and not f.startswith("."):
                return True
    return False


def local_root(spec: str) -> Path | None:
    """The folder ``spec`` names, or the Hub cache's snapshot of a Hub id: relative file paths in
    its tables resolve there. None for the demo and for Hub datasets not in the cache."""
    if spec == "demo":
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    return None if looks_like_path(spec) else cached_snapshot(spec)


def resolve_paths(ds: Any, column: str, root: Path | None) -> Any:
    """A column of file paths written relative to the dataset's folder -> absolute paths.

    Tables (csv / jsonl / parquet) that list media files name them relative to themselves;
    ``datasets`` keeps the text as it is, so a worker in another directory would not find them.
    """
    if root is None or column not in (ds.column_names or []):
        return ds
    feature = ds.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return ds
    base = root.resolve()

    def absolute(batch: dict) -> dict:
        out = []
        for p in batch[column]:
            if p and not os.path.isabs(p) and "://" not in p and (base / p).exists():
                p = str(base / p)
            out.append(p)
        return {column: out}

    return ds.map(absolute, batched=True, desc=None, load_from_cache_file=False, keep_in_memory=True)


def _offline() -> list[str]:
    return [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")]


def cached_snapshot(repo_id: str) -> Path | None:
    """The local Hub cache's snapshot of a dataset repository (what ``snapshot_download`` left), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001  not cached, or a bad id: the caller reports it
        return None


def hub_reachable(repo_id: str) -> None:
    """One request for the dataset's Hub page, so a dead network or a mistyped id fails at once
    (``load_dataset`` retries each request several times with back-off before it gives up)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except GatedRepoError:
        return  # load_dataset says how to accept its terms
    except RepositoryNotFoundError:
        raise DataError(f"'{repo_id}' is neither a local folder nor a dataset on the Hugging Face Hub") from None
    except Exception as e:  # noqa: BLE001  httpx / OSError / HfHubHTTPError: the Hub is not reachable
        raise DataError(f"cannot load '{repo_id}' from the Hugging Face Hub (the Hub is not reachable from here: "
                        f"{type(e).__name__}); download it beforehand or pass a local folder with --dataset PATH") from None


def open_split(spec: str, split: str, config: str | None = None, streaming: bool = False,
               folder_builder: str = "audiofolder") -> Any:
    """Load one split of a Hub id or a local folder (see the module docstring for the layouts).

    Raw media are read with ``folder_builder`` (``audiofolder`` / ``imagefolder``): class
    subfolders become a ``label`` column, ``train`` / ``test`` subfolders become splits.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"--dataset {spec}: expected a folder, found a file")
        return _open_local(path, spec, split, config, streaming, folder_builder)
    if looks_like_path(spec):
        raise DataError(f"--dataset {spec}: no such folder")
    offline = _offline()
    if not offline:
        try:
            hub_reachable(spec)
        except DataError:
            snapshot = cached_snapshot(spec)  # the network is down, but the dataset was downloaded before
            if snapshot is None:
                raise
            return _open_local(snapshot, spec, split, config, streaming, folder_builder)
    try:
        return datasets.load_dataset(spec, name=config, split=split, streaming=streaming)
    except ConnectionError:
        snapshot = cached_snapshot(spec)
        if snapshot is not None:  # offline, and not prepared by datasets, but in the Hub cache
            return _open_local(snapshot, spec, split, config, streaming, folder_builder)
        why = f"{offline[0]} is set" if offline else "the Hub is not reachable from here"
        raise DataError(
            f"cannot load '{spec}' from the Hugging Face Hub ({why}) and it is not in the local Hub cache; "
            f"download it beforehand or pass a local folder with --dataset PATH"
        ) from None
    except FileNotFoundError:
        raise DataError(f"'{spec}' is neither a local folder nor a dataset on the Hugging Face Hub") from None
    except ValueError as e:
        raise DataError(f"{spec}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001  datasets raises many types (DatasetNotFoundError, ...): keep one line
        raise DataError(f"cannot load '{spec}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _local_cache(path: Path) -> Path:
    """Where the Arrow files of a local table folder go: keyed by its path and its files' sizes and
    times. ``datasets`` keys a README-named config by the folder's name and the config's name alone,
    so two folders called ``snap`` with a config ``clean`` would share (and mix up) one cache."""
    import hashlib

    digest = hashlib.sha1(str(path.resolve()).encode())
    for root, dirs, files in sorted(os.walk(path)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            digest.update(f"{os.path.join(root, f)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return Path(datasets.config.HF_DATASETS_CACHE) / "mmssl_local" / digest.hexdigest()[:16]


def _open_local(path: Path, spec: str, split: str, config: str | None, streaming: bool, folder_builder: str) -> Any:
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{spec} has no split '{split}'; it has: {', '.join(loaded)}")
            return loaded[split]
        return loaded
    table = is_table_folder(path)
    try:
        if table:
            return datasets.load_dataset(str(path), name=config, split=split, streaming=streaming,
                                         cache_dir=None if streaming else str(_local_cache(path)))
        return _load_folder(folder_builder, path, split, streaming)
    except FileNotFoundError as e:
        raise DataError(f"{spec}: no data files found for {'its tables' if table else folder_builder} "
                        f"({str(e).splitlines()[0] if str(e) else e})") from None
    except ValueError as e:
        first = str(e).splitlines()[0]
        if "split" in first.lower() and ("unknown" in first.lower() or "no data" in first.lower()):
            raise DataError(f"{spec}: no split '{split}' ({first})") from None
        raise DataError(f"{spec}: {first}") from None
    except Exception as e:  # noqa: BLE001  a malformed table (pyarrow, json, ...): one line
        raise DataError(f"{spec}: cannot read it as a dataset: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None


@dataclasses.dataclass
class PathAudio(datasets.Audio):
    """A ``datasets.Audio`` feature that stores paths and bytes without importing torchcodec.

    ``datasets.Audio.encode_example`` imports torchcodec even for a plain file path, so an
    ``audiofolder`` (and any streamed audio) fails where torchcodec is absent or cannot load
    FFmpeg; mmssl decodes the files itself (soundfile, else torchcodec).
    """

    def encode_example(self, value: Any) -> dict:
        if isinstance(value, (str, os.PathLike)):
            return {"bytes": None, "path": str(value)}
        if isinstance(value, dict) and "array" not in value and (value.get("bytes") is not None or value.get("path") is not None):
            return {"bytes": value.get("bytes"), "path": value.get("path")}
        return super().encode_example(value)


def audio_feature(decode: bool = False) -> PathAudio:
    return PathAudio(decode=decode)


def _load_folder(folder_builder: str, path: Path, split: str, streaming: bool) -> Any:
    """``load_dataset(folder_builder, data_dir=path)``, with audio files kept as paths (see audio_feature)."""

    builder = datasets.load_dataset_builder(folder_builder, data_dir=str(path))
    if folder_builder == "audiofolder":
        builder.BASE_FEATURE = PathAudio
    if streaming:
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)


def check_columns(dataset: Any, spec: str, **wanted: str | None) -> None:
    """Raise a DataError naming the existing columns when a requested one is missing."""
    columns = list(dataset.column_names or []) if getattr(dataset, "column_names", None) is not None else []
    if not columns and hasattr(dataset, "features") and dataset.features:
        columns = list(dataset.features)
    for option, column in wanted.items():
        if column is not None and columns and column not in columns:
            raise DataError(f"{spec}: no column '{column}' (set by {option}); columns: {', '.join(columns)}")


def cache_dir() -> Path:
    """Where generated demo data is cached: $MMSSL_CACHE, else ~/.cache/mmssl."""
    return Path(os.environ.get("MMSSL_CACHE", Path.home() / ".cache" / "mmssl"))


def map_labels(ds: Any, column: str, vocab: list | None) -> tuple[np.ndarray, list]:
    """Label values -> (int64 indices (N,), vocab). A ClassLabel's names are the vocab, otherwise
    the sorted distinct values; a given vocab (the train split's) wins, unknown values -> -1."""
    feature, values = ds.features[column], ds[column]
    if isinstance(feature, datasets.ClassLabel):
        values = [feature.names[v] if v is not None and v >= 0 else None for v in values]
        vocab = list(vocab) if vocab is not None else list(feature.names)
    elif vocab is None:
        vocab = sorted({v for v in values if v is not None}, key=str)
    index = {v: i for i, v in enumerate(vocab)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64), list(vocab)


SPEAKER_COLUMNS = ("speaker_id", "speaker")


def choose_label_column(ds: Any, modality: str, asked: str | None) -> tuple[str | None, str]:
    """(the column the probes read, why it was chosen) for a ``datasets`` table.

    ``asked`` (--label-column) wins and must exist. Otherwise, by convention: for audio a speaker
    column (``speaker_id`` / ``speaker``), since the utterance probe is a speaker probe; then a
    ClassLabel column named ``label`` (what audiofolder / imagefolder make of class subfolders);
    then the only ClassLabel column, when there is exactly one; then, in a table without any
    ClassLabel (csv, json), an integer or text column named ``label``. None when nothing qualifies.
    """
    features = getattr(ds, "features", None) or {}
    if asked is not None:  # the source checked that it exists when it opened
        return asked, "--label-column"
    classes = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if modality == "audio":
        for name in SPEAKER_COLUMNS:
            if name in features:
                return name, "the speaker column"
    if "label" in classes:
        return "label", f"ClassLabel, {len(features['label'].names)} classes"
    if len(classes) == 1:
        return classes[0], f"the only ClassLabel column, {len(features[classes[0]].names)} classes"
    plain = features.get("label")
    if not classes and isinstance(plain, datasets.Value) and (plain.dtype.startswith("int") or "string" in plain.dtype):
        return "label", "the column named label (csv / json tables store no ClassLabel)"
    return None, ""


def probe_hint(task: Any, cfg: Any, ds: Any) -> str:
    """One line: the probes the evaluation will skip for want of labels, and how to run them."""
    probes = {"audio": "speaker / phone probes", "image": "kNN / linear probes"}.get(task.modality, "probes")
    columns = [c for c in (getattr(ds, "column_names", None) or []) if c not in
               (getattr(cfg, "audio_column", None), getattr(cfg, "image_column", None))]
    column = "COLUMN" + (f" (one of: {', '.join(columns[:6])})" if columns else "")
    return (f"no labels: the evaluation skips the {probes}; after training run them with "
            f"mmssl probe --checkpoint {cfg.output_dir} --dataset {cfg.dataset} --label-column {column}")
