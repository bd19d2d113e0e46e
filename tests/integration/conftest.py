"""Fixtures: a copy of the project committed in a fresh git repository, fresh or with the pipeline already run.

The pipeline is built from scratch once per test session (`pipeline_build`, shared by every xdist worker through a
file lock); a test module that needs a built repository gets its own copy of it (`built_repo`), store included. So
is the pipeline with the real BTS sample beside the simulated stations (`real_export_build`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from tests.integration.workspace import PROJECT, copy_project_on_defaults, copy_workspace, run, set_params

REAL_SAMPLE = PROJECT.parent / "shared" / "data" / "bts" / "param-2017-04-18-station-1161114004.csv"
REAL_STATION = 1161114004


def make_project_repo(repo: Path) -> Path:
    """The project's files (as in the working tree) committed in a fresh git repository at `repo`, on its simulated data."""
    copy_project_on_defaults(repo)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "Test"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "project"], repo)
    return repo


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    return make_project_repo(tmp_path / "repo")


def session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker of this test session sees (the parent of the workers' own base folders)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


def session_build(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A repository built once per test session by `build` (the project committed, then what `build` does in it,
    committed), shared by every xdist worker through a file lock. Read it through a copy, never in place."""
    folder = session_folder(tmp_path_factory) / name
    folder.mkdir(exist_ok=True)
    repo, done = folder / "repo", folder / "built"
    with FileLock(folder / ".lock"):
        if not done.exists():
            shutil.rmtree(repo, ignore_errors=True)
            make_project_repo(repo)
            build(repo)
            run(["git", "add", "-A"], repo)
            run(["git", "commit", "-q", "--allow-empty", "-m", "pipeline results"], repo)  # empty when dvc.lock was up to date
            done.touch()
    return repo


@pytest.fixture(scope="session")
def pipeline_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's pipeline run from nothing (`dvc repro` in a fresh repository, results committed), once per session.

    Read it through `built_repo`, never in place: tests that only read a built pipeline share this one build.
    """
    return session_build(tmp_path_factory, "pipeline-build", lambda repo: run(["dvc", "repro"], repo))


def track_real_sample(repo: Path) -> str:
    """The real sample copied into the repository's data/external and tracked with `dvc add`; its data.sources entry."""
    assert REAL_SAMPLE.is_file(), f"{REAL_SAMPLE} is missing: the real BTS sample CI runs on"
    source = f"data/external/{REAL_SAMPLE.name}"
    shutil.copy(REAL_SAMPLE, repo / source)
    run(["dvc", "add", source], repo)
    return source


def add_real_export(repo: Path) -> None:
    """The real sample tracked with `dvc add` beside the simulated stations, its station held out, and the pipeline run:
    the model learns the simulated stations alone and forecasts the real one it never saw."""
    set_params(repo, "data", "sources", ["simulated", track_real_sample(repo)])
    set_params(repo, "featurize", "holdout_stations", [REAL_STATION])
    run(["dvc", "repro"], repo)


@pytest.fixture(scope="session")
def real_export_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline with the real sample beside the simulated stations (`add_real_export`), built once per session."""
    return session_build(tmp_path_factory, "real-export-build", add_real_export)


@pytest.fixture(scope="module")
def built_repo(pipeline_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository where `dvc repro` has run and its results are committed: this module's own copy of the session's build."""
    repo = tmp_path_factory.mktemp("built") / "repo"
    copy_workspace(pipeline_build, repo)
    return repo


@pytest.fixture
def own_built_repo(pipeline_build: Path, tmp_path: Path) -> Path:
    """A test's own copy of the session's build, for a test that changes it (experiments, edits, registrations)."""
    repo = tmp_path / "repo"
    copy_workspace(pipeline_build, repo)
    return repo
