"""Files that cannot be read, said the same way by every source (audio, images, video).

A source checks its files when it opens (a header, or a video's last frame) and leaves out those
that fail: ``Unreadable`` collects them and reports them once, as one warning that counts and
names them, or as one DataError when nothing is left. A file that still fails later, inside a
DataLoader worker, is replaced by another item with one warning naming it (``replaced``), so
training never dies in a worker. The messages::

    SOURCE: skipped K of N NOUN that cannot be read: a.wav (why); b.wav (why) ...
    SOURCE: none of its N NOUN can be read: a.wav (why); ...
    ERROR NAMING THE FILE; using item J instead
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

from mmssl.errors import DataError

LISTED = 5  # files a message names; "..." stands for the rest, which the count covers
WHY_CHARS = 80  # a reason is cut here so the message stays one readable line


class Unreadable:
    """The files of ``source`` left out when it opened: ``add(name, why)`` each, then ``report(total)``.

    Args:
        source: what the messages call the source (its --dataset value and split).
        noun: what its files are, plural ("videos", "audio files", "images").
    Attributes:
        names: the left-out files, in the order they were added.
    """

    def __init__(self, source: str, noun: str):
        self.source, self.noun = source, noun
        self.names: list[str] = []
        self.reasons: list[str] = []

    def add(self, name: str, why: str) -> None:
        lines = str(why).splitlines()
        self.names.append(name)
        self.reasons.append(lines[0][:WHY_CHARS] if lines else "unknown error")

    def listing(self) -> str:
        shown = [f"{n} ({w})" for n, w in zip(self.names[:LISTED], self.reasons)]
        return "; ".join(shown) + (" ..." if len(self.names) > LISTED else "")

    def report(self, total: int, stacklevel: int = 3) -> None:
        """One warning counting the left-out files among ``total``; a DataError when they are all of them."""
        if not self.names:
            return
        if len(self.names) >= total:
            raise DataError(f"{self.source}: none of its {total} {self.noun} can be read: {self.listing()}")
        warnings.warn(f"{self.source}: skipped {len(self.names)} of {total} {self.noun} that cannot be read: "
                      f"{self.listing()}", stacklevel=stacklevel)


def replaced(error: Exception, substitute: str, stacklevel: int = 3) -> None:
    """Warn that a file failed after the open-time check (``error`` names it) and what stands in for it."""
    warnings.warn(f"{error}; using {substitute} instead", stacklevel=stacklevel)


def first_readable(read: Callable[[int], dict], i: int, count: int, error: type[Exception],
                   source: str, noun: str) -> dict:
    """``read(i)``; when that raises ``error``, ``read`` of the next positions in turn (wrapping
    around ``count``), with a ``replaced`` warning for each failure. A DataError when none reads."""
    for attempt in range(count):
        j = (i + attempt) % count
        try:
            return read(j)
        except error as e:
            replaced(e, f"item {(j + 1) % count}", stacklevel=4)
    raise DataError(f"{source}: none of its {count} {noun} can be read")
