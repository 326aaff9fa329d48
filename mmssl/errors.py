"""Errors that end a command with one clear line instead of a traceback."""


class MmsslError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero."""


class DataError(MmsslError):
    """A dataset that cannot be opened or used as asked."""


class TrainingError(MmsslError):
    """Training cannot continue (for example a non-finite loss)."""
