"""Fixtures: a copy of the project committed in a fresh git repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.workspace import PROJECT, project_files, run


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    """The project's files (as in the working tree) committed in a fresh git repository."""
    repo = tmp_path / "repo"
    for name in project_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, target)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "Test"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "project"], repo)
    return repo
