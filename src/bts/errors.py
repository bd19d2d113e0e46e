"""Error types for expected failures: printed as one line at the edge, no traceback."""

from __future__ import annotations

QUOTED_CHARACTERS = 80  # of file content, a column list or another library's error, what a one-line message may quote


def quoted(text: str, limit: int = QUOTED_CHARACTERS) -> str:
    """text cut to what a one-line message may quote."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int = QUOTED_CHARACTERS) -> str:
    """The first line of another library's error (its type when it says nothing), cut to what a message may quote."""
    text = str(exc).strip()
    return quoted(text.splitlines()[0] if text else type(exc).__name__, limit)


class BtsError(Exception):
    """An expected failure whose message tells the user what to fix."""


class InputFileError(BtsError):
    """An input file that cannot be read as what it should hold (a BTS parameter export, a Parquet table, ...)."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ConfigError(BtsError):
    """A params.yaml value or command-line argument that cannot be used."""


class DataContractError(BtsError):
    """Produced data that breaks its schema or its row accounting."""
