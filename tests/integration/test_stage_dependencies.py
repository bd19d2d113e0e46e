"""Real `dvc status` sees a change to any module a stage imports, without running the pipeline.

In a copy of the project, placeholder outputs let `dvc commit -f` record the
current code, data and params in dvc.lock, so `dvc status` starts clean. Then
each module under src/bts in turn gets a comment appended, and `dvc status`
must report exactly the deps of dvc.yaml that hold it as modified, and among
them one for every stage whose import closure contains the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import make_project_repo
from tests.integration.workspace import run
from tests.unit.test_stage_dependencies import covers, import_closure, load_stages, stage_modules, stage_outs

pytestmark = pytest.mark.integration

NOT_STAGE_CODE = ("src/bts/cli.py", "src/bts/summary.py")  # the command line and `make repro`'s summary: no stage runs them
NOT_STAGE_FOLDERS = ("src/bts/serving", "src/bts/batch")
ENV = {"DVC_NO_ANALYTICS": "1"}


def dvc_status(repo: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repo, env=ENV).stdout or "{}")


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


def stage_code(repo: Path) -> list[str]:
    files = sorted(p.relative_to(repo).as_posix() for p in (repo / "src" / "bts").rglob("*.py"))
    return [f for f in files if f not in NOT_STAGE_CODE and not any(covers(folder, f) for folder in NOT_STAGE_FOLDERS)]


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
    closures = {stage: import_closure(module, repo / "src") for stage, module in stage_modules(stages).items()}
    files = stage_code(repo)
    assert "src/bts/stages/__init__.py" in files and "src/bts/data/ingest.py" in files
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
    assert not problems, "\n".join(problems)
    assert dvc_status(repo) == {}  # every file is back as it was


def test_module_name():
    assert module_name("src/bts/__init__.py") == "bts"
    assert module_name("src/bts/data/__init__.py") == "bts.data"
    assert module_name("src/bts/model/forecasters.py") == "bts.model.forecasters"
