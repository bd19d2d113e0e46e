"""Real `dvc status` sees a change to any module a stage imports, without running the pipeline.

In a copy of the project, placeholder outputs let `dvc commit -f` record the
current code, data and params in dvc.lock, so `dvc status` starts clean. Then
each module under src/ in turn gets a comment appended, and `dvc status`
must report exactly the deps of dvc.yaml that hold it as modified, and among
them one for every stage whose import closure contains the module. A module
only `bts` commands use leaves every stage up to date; one that reruns train
reruns evaluate and serve too (they find the training run by its code md5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import make_project_repo
from tests.integration.workspace import run
from tests.unit.test_stage_dependencies import (
    FOLLOWS_TRAINING,
    TRAINING_STAGE,
    covers,
    load_stages,
    script_closure,
    stage_outs,
    stage_scripts,
)

pytestmark = pytest.mark.integration

# What only `bts` commands use: editing it must leave every stage up to date and dvc.lock unchanged.
COMMAND_CODE = ("src/bts/cli.py", "src/bts/summary.py", "src/bts/team.py", "src/bts/mlproject.py")
COMMAND_FOLDERS = ("src/bts/lifecycle", "src/bts/serving", "src/bts/monitoring", "src/bts/batch")
ENV = {"DVC_NO_ANALYTICS": "1"}


def dvc_status(repo: Path) -> dict:
    """What `dvc status --json` prints, from DVC's own API in this process (the loop below asks it once per module)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        status = json.loads(json.dumps(dvc.status()))
    return {key.rpartition(":")[2]: changes for key, changes in status.items()}  # `<path>/dvc.yaml:train` -> `train`


def make_placeholders(repo: Path, stages: dict[str, dict]) -> list[str]:
    """Stand-ins for the outputs not in git (data, model, package): `dvc commit` needs every output to exist."""
    made = []
    for stage in stages.values():
        for out in stage_outs(stage):
            path = repo / out
            if path.exists():
                continue
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"placeholder for {out}\n")
            else:
                path.mkdir(parents=True)
                (path / "placeholder.txt").write_text(f"placeholder for {out}\n")
            made.append(out)
    return made


def module_name(relpath: str) -> str:
    """'src/bts/data/__init__.py' -> 'bts.data'; 'src/bts/files.py' -> 'bts.files'."""
    parts = list(Path(relpath).relative_to("src").with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(repo: Path) -> list[str]:
    return sorted(p.relative_to(repo).as_posix() for p in (repo / "src").rglob("*.py"))


def is_command_code(relpath: str) -> bool:
    return relpath in COMMAND_CODE or any(covers(folder, relpath) for folder in COMMAND_FOLDERS)


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project copied into a git repository, with dvc.lock recording its current deps (placeholder outputs)."""
    repo = make_project_repo(tmp_path_factory.mktemp("deps") / "repo")
    made = make_placeholders(repo, load_stages(repo))
    assert "data/processed/features.parquet" in made  # the copy holds no DVC data
    run(["dvc", "commit", "-f", "-q"], repo, env=ENV)
    return repo


def test_dvc_status_starts_clean(committed_repo):
    assert dvc_status(committed_repo) == {}


def test_compiled_python_in_a_code_folder_changes_nothing(committed_repo):
    """Running a stage leaves __pycache__ in src/bts/data: .dvcignore keeps it out of the folder's md5."""
    cache = committed_repo / "src" / "bts" / "data" / "__pycache__"
    cache.mkdir()
    (cache / "ingest.cpython-311.pyc").write_bytes(b"\x00compiled")
    try:
        assert dvc_status(committed_repo) == {}
    finally:
        (cache / "ingest.cpython-311.pyc").unlink()
        cache.rmdir()


def test_touching_a_module_changes_exactly_the_deps_that_hold_it(committed_repo):
    repo = committed_repo
    stages = load_stages(repo)
    closures = {stage: script_closure(repo / script, repo / "src") for stage, script in stage_scripts(stages).items()}
    files = sources(repo)
    assert {"src/stages/train.py", "src/bts/data/ingest.py", "src/bts/cli.py", "src/bts/lifecycle/lineage.py"} <= set(files)
    problems = []
    for relpath in files:
        path = repo / relpath
        original = path.read_bytes()
        path.write_bytes(original + b"\n# touched\n")
        try:
            status = dvc_status(repo)
        finally:
            path.write_bytes(original)
        expected = {}
        for stage, definition in stages.items():
            holding = {dep: "modified" for dep in definition.get("deps", []) if covers(dep, relpath)}
            if holding:
                expected[stage] = [{"changed deps": holding}]
        module = module_name(relpath)
        for stage, closure in sorted(closures.items()):
            if module in closure and stage not in status:
                chain = " -> ".join(closure[module])
                problems.append(f"{relpath}: stage {stage!r} imports {module} (via {chain}) but dvc status reports no change")
        if status != expected:
            problems.append(f"{relpath}: dvc status reports {status}, dvc.yaml's deps predict {expected}")
        if is_command_code(relpath) and status:
            problems.append(f"{relpath}: only commands use it, yet dvc status reports {sorted(status)} changed")
        if TRAINING_STAGE in status and not set(FOLLOWS_TRAINING) <= set(status):
            problems.append(f"{relpath}: reruns {TRAINING_STAGE} but not all of {FOLLOWS_TRAINING} (status: {sorted(status)})")
    assert not problems, "\n".join(problems)
    assert dvc_status(repo) == {}  # every file is back as it was


def test_the_command_code_is_every_module_no_stage_depends_on(committed_repo):
    """The list above names what commands use: every other module is some stage's dependency, and no command module is."""
    deps = [dep for stage in load_stages(committed_repo).values() for dep in stage.get("deps", [])]
    undeclared = [f for f in sources(committed_repo) if not any(covers(dep, f) for dep in deps) and not is_command_code(f)]
    assert not undeclared, f"modules no stage depends on, missing from COMMAND_CODE/COMMAND_FOLDERS: {undeclared}"


def test_module_name():
    assert module_name("src/stages/train.py") == "stages.train"
    assert module_name("src/bts/__init__.py") == "bts"
    assert module_name("src/bts/data/__init__.py") == "bts.data"
    assert module_name("src/bts/model/forecasters.py") == "bts.model.forecasters"
