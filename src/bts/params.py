"""Reading params.yaml, the one home of every tunable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bts.errors import ConfigError

PARAMS_FILE = Path("params.yaml")


def load_params(section: str | None = None, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """All params, or one top-level section of them."""
    try:
        params = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read params ({exc})") from exc
    if section is None:
        return params
    if section not in params:
        raise ConfigError(f"{path}: missing section '{section}'")
    return params[section]
