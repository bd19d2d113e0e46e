"""What a model reference, a version number and an alias look like, checked before MLflow is imported or a store
opened: a mistyped one is one line at once.

A model reference is a registry URI (`models:/name@alias`, `models:/name/3`), a run id or its first 8 or more
characters, or a packaged model folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from bts.errors import ConfigError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID_PREFIX = re.compile(r"^[0-9a-f]{8,32}$")  # what `bts compare` shows (8 characters) names a run when unique
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")
# MLflow reserves `latest` and version-like aliases (v1, 3); ours are plain words.
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
RESERVED_ALIASES = {"latest"}
MODEL_REFERENCE = "models:/name@alias, models:/name/<version>, a run id (8 characters or more of it), or a package folder"


def check_reference(ref: str) -> str:
    """The reference, or a ConfigError saying what is wrong with its form (whether it exists is the store's to say)."""
    if ref.startswith("models:/"):
        match = MODEL_URI.match(ref)
        if not match:
            raise ConfigError(f"{ref}: not a registry reference (models:/name@alias or models:/name/<version>)")
        if match.group("version") is not None and not match.group("version").isdigit():
            raise ConfigError(f"{ref}: version {match.group('version')!r} is not a number")
    elif not Path(ref).is_dir() and not RUN_ID_PREFIX.match(ref):
        raise ConfigError(f"{ref}: not a model reference ({MODEL_REFERENCE})")
    return ref


def check_alias(alias: str) -> str:
    if alias in RESERVED_ALIASES or re.fullmatch(r"v\d+", alias) or not ALIAS_PATTERN.match(alias):
        raise ConfigError(f"alias {alias!r}: use a lowercase word of letters, digits, '-' or '_' (not 'latest' or 'v<number>')")
    return alias


def check_version(version: str) -> str:
    if not str(version).isdigit():
        raise ConfigError(f"version {version!r}: give a version number, e.g. 3")
    return str(version)
