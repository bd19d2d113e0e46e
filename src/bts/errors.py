"""Error types for expected failures: printed as one line at the edge, no traceback."""

from __future__ import annotations


class BtsError(Exception):
    """An expected failure whose message tells the user what to fix."""


class InputFileError(BtsError):
    """A raw input file that is not a readable BTS parameter export."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ConfigError(BtsError):
    """A params.yaml value or command-line argument that cannot be used."""


class DataContractError(BtsError):
    """Produced data that breaks its schema or its row accounting."""
