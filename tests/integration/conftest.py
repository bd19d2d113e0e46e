"""Fixtures: a copy of the project committed in a fresh git repository, fresh or with the pipeline already run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.workspace import PROJECT, project_files, project_uses_defaults, run, set_params


def make_project_repo(repo: Path) -> Path:
    """The project's files (as in the working tree) committed in a fresh git repository at `repo`, on its simulated data."""
    for name in project_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, target)
    if not project_uses_defaults():  # real exports the user added are not copied: the tests bring their own
        set_params(repo, "data", "sources", ["simulated"])
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "Test"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "project"], repo)
    return repo


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    return make_project_repo(tmp_path / "repo")


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project repository where `dvc repro` has run and its results are committed (shared by a module's tests)."""
    repo = make_project_repo(tmp_path_factory.mktemp("built") / "repo")
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", "pipeline results"], repo)  # empty when dvc.lock was up to date
    return repo
