"""Open a dataset split from the Hugging Face Hub or a local folder, with one-line errors."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from mmssl.errors import DataError


def looks_like_path(spec: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else is meant as a path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def open_split(spec: str, split: str, config: str | None = None, streaming: bool = False, folder_builder: str = "audiofolder") -> Any:
    """Load one split of a Hub dataset id or a local folder.

    A local folder may be a ``save_to_disk`` dataset, or raw files read with
    ``folder_builder`` (``audiofolder`` / ``imagefolder``): class subfolders
    become a ``label`` column, ``train`` / ``test`` subfolders become splits.
    """

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"--dataset {spec}: expected a folder, found a file")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{spec} has no split '{split}'; it has: {', '.join(loaded)}")
                return loaded[split]
            return loaded
        try:
            return _load_folder(folder_builder, path, split, streaming)
        except FileNotFoundError as e:
            raise DataError(f"{spec}: no data files found for {folder_builder} ({e})") from None
        except ValueError as e:
            if "split" in str(e).lower():
                raise DataError(f"{spec}: no split '{split}' ({str(e).splitlines()[0]})") from None
            raise DataError(f"{spec}: {str(e).splitlines()[0]}") from None
    if looks_like_path(spec):
        raise DataError(f"--dataset {spec}: no such folder")
    try:
        return datasets.load_dataset(spec, name=config, split=split, streaming=streaming)
    except ConnectionError:
        offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")]
        why = f"{offline[0]} is set" if offline else "the Hub is not reachable from here"
        raise DataError(
            f"cannot load '{spec}' from the Hugging Face Hub ({why}); download it beforehand "
            f"or pass a local folder with --dataset PATH"
        ) from None
    except FileNotFoundError:
        raise DataError(f"'{spec}' is neither a local folder nor a dataset on the Hugging Face Hub") from None
    except ValueError as e:
        raise DataError(f"{spec}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001  datasets raises many types (DatasetNotFoundError, ...): keep one line
        raise DataError(f"cannot load '{spec}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


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
