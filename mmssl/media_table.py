"""A map-style ``datasets`` split of media files that mmssl decodes itself: what the audio and
image sources share (and the video source's column handling): columns checked, relative paths
resolved, labels mapped to 0..C-1, files that cannot be read left out once and replaced later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmssl.errors import DataError
from mmssl.sources import check_columns, local_root, map_labels, resolve_paths
from mmssl.unreadable import Unreadable, first_readable


def open_column(ds: Any, spec: str, column: str, option: str, label_column: str | None, vocab: list | None,
                cast: Any, kind: str) -> tuple[Any, np.ndarray | None, list | None]:
    """A ``datasets`` split whose ``column`` holds media files -> (the split, labels, vocab).

    Checks that the columns exist (``option`` names the one that set ``column``), resolves file
    paths written relative to the dataset's folder, applies ``cast(ds)`` (which turns the column
    into {"bytes", "path"} values mmssl decodes itself; a failure says the column does not hold
    ``kind``) and maps ``label_column`` to indices (labels and vocab None without one).
    """
    check_columns(ds, spec, **{option: column, "--label-column": label_column})
    ds = resolve_paths(ds, column, local_root(spec))  # a table of paths relative to its folder
    try:
        ds = cast(ds)
    except Exception as e:  # noqa: BLE001  datasets raises many types; one line
        raise DataError(f"{spec}: column '{column}' does not hold {kind} ({str(e).splitlines()[0][:120]})") from None
    if label_column is None:
        return ds, None, None
    labels, vocab = map_labels(ds, label_column, vocab)
    return ds, labels, vocab


class MediaTable:
    """A map-style ``datasets`` split of media files (audio, images) that mmssl decodes itself.

    Subclasses set ``option`` (the column's command-line option), ``kind`` (what the column must
    hold), ``noun`` (its files, plural), ``read_error`` and ``scan_limit``, and give ``_cast(ds, column)``,
    ``_check(path)`` (why a file on disk cannot be read, or None: a cheap header check) and
    ``_read(row)`` (the item). Files that fail the check when the split opens are left out
    (``skipped``) and reported once; a file that fails later is replaced by the next readable one
    with a warning naming it (see ``mmssl.unreadable``). Attributes: ``ds``, ``column``, ``name``,
    ``labels`` (int64 (N,) or None), ``vocab``, ``num_classes``, ``rows``, ``skipped``.
    """

    option: str
    kind: str
    noun: str
    read_error: type[Exception] = DataError
    scan_limit: int | None = None  # larger splits skip the open-time check (one open() per file is too slow)

    def __init__(self, ds: Any, spec: str, column: str, label_column: str | None, vocab: list | None = None):
        self.ds, self.labels, self.vocab = open_column(ds, spec, column, self.option, label_column, vocab,
                                                       lambda d: self._cast(d, column), self.kind)
        self.column, self.label_column, self.name = column, label_column, spec
        self.num_classes = len(self.vocab) if self.vocab is not None else None
        self.rows = self._scan()

    def _cast(self, ds: Any, column: str) -> Any:
        raise NotImplementedError

    def _check(self, path: str) -> str | None:
        raise NotImplementedError

    def _read(self, row: int) -> dict:
        raise NotImplementedError

    def label(self, row: int) -> int:
        return int(self.labels[row]) if self.labels is not None else -1

    def _scan(self) -> list[int]:
        import pyarrow.compute as pc

        n = len(self.ds)
        unreadable = Unreadable(self.name, self.noun)
        self.skipped = unreadable.names
        if self.scan_limit is not None and n > self.scan_limit:
            return list(range(n))
        # Arrow, not Python objects: only the paths are materialised, never the embedded bytes.
        column = self.ds.with_format("arrow")[self.column]
        paths = pc.struct_field(column, "path").to_pylist()
        embedded = pc.is_valid(pc.struct_field(column, "bytes")).to_pylist()
        rows = []
        for i, (path, inline) in enumerate(zip(paths, embedded)):
            why = self._check(path) if path and not inline else None
            if why is None:
                rows.append(i)
            else:
                unreadable.add(Path(path).name, why)
        unreadable.report(n, stacklevel=4)
        if not rows:
            raise DataError(f"{self.name}: no {self.noun}")
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return first_readable(lambda j: self._read(self.rows[j]), i, len(self.rows), self.read_error,
                              self.name, self.noun)
