"""dvc.yaml lists every file a stage runs and reads: its code (the `bts` modules it imports) and its input arguments.

A module a stage imports but does not depend on would let `dvc repro` skip the
stage after that module changed, and keep an output the new code would not
produce. The import closure is found statically: every `import bts...` and
`from bts... import ...` (also inside functions), transitively, with the
package __init__.py of every imported module's parents.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections import deque
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.conftest import PROJECT

PACKAGE = "bts"
STAGE_SCRIPT = re.compile(r"\bpython (src/stages/(\w+)\.py)\b")
INPUT_FLAGS = {"--features", "--datasets", "--raw", "--clean", "--sensors", "--model", "--simulated", "--inputs"}
OUTPUT_FLAGS = {
    "--out",
    "--schema",
    "--failures",
    "--document",
    "--datasheet",
    "--quarantine",
    "--metrics",
    "--by-parameter",
    "--predictions",
    "--plots",
    "--package",
}
DATASET_DOCUMENTS = ("raw.json", "clean.json", "features.json")  # what `--datasets <folder>` reads from the folder


def load_stages(root: Path = PROJECT) -> dict[str, dict]:
    return yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_scripts(stages: dict[str, dict]) -> dict[str, str]:
    """{stage: script} for every stage whose cmd runs `python src/stages/<name>.py`."""
    found = {}
    for name, stage in stages.items():
        match = STAGE_SCRIPT.search(" ".join(stage["cmd"]) if isinstance(stage["cmd"], list) else stage["cmd"])
        if match:
            found[name] = match.group(1)
    return found


def module_file(module: str, src: Path) -> Path | None:
    """The file of a module under src (a package's __init__.py), or None."""
    base = src.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(f"{PACKAGE}.")


def parents(module: str) -> list[str]:
    """'bts.data.ingest' -> ['bts', 'bts.data']: the packages Python imports first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(path: Path, module: str, src: Path) -> set[str]:
    """The `bts` modules one file imports: `import bts.x`, `from bts.x import y` (y too when it is a submodule), relative forms."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if in_package(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not in_package(target):
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if module_file(f"{target}.{alias.name}", src))
    return found


def import_closure(module: str, src: Path) -> dict[str, list[str]]:
    """{module: a shortest import chain from `module` to it} for every `bts` module that running `module` imports, itself included."""
    chains: dict[str, list[str]] = {}
    pending = deque([(module, [module])])
    while pending:
        name, chain = pending.popleft()
        if name in chains:
            continue
        chains[name] = chain
        pending.extend((parent, [*chain, parent]) for parent in parents(name) if parent not in chains)
        path = module_file(name, src)
        if path is not None:
            imported = sorted(set(imported_modules(path, name, src)) - set(chains))
            pending.extend((child, [*chain, child]) for child in imported)
    return chains


def script_closure(script: Path, src: Path) -> dict[str, list[str]]:
    """import_closure of everything a script (not itself a `bts` module) imports, chains starting at the script."""
    chains: dict[str, list[str]] = {}
    for module in sorted(imported_modules(script, script.stem, src)):
        for name, chain in import_closure(module, src).items():
            if name not in chains or len(chain) + 1 < len(chains[name]):
                chains[name] = [script.name, *chain]
    return chains


def covers(dep: str, path: str) -> bool:
    """A dep covers a path equal to it or inside it (a folder dep)."""
    dep_path, target = PurePosixPath(dep), PurePosixPath(path)
    return target == dep_path or dep_path in target.parents


def covering_deps(deps: list[str], path: str) -> list[str]:
    return [dep for dep in deps if covers(dep, path)]


def stage_outs(stage: dict) -> list[str]:
    """Paths of a stage's outs, metrics and plots (each an entry `path` or `{path: options}`)."""
    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def cmd_tokens(stage: dict) -> list[str]:
    cmd = stage["cmd"]
    return shlex.split(" ".join(cmd) if isinstance(cmd, list) else cmd)


def cmd_flags(stage: dict) -> dict[str, str]:
    """{--flag: value} of a stage's command (`--flag value` or `--flag=value`)."""
    tokens = cmd_tokens(stage)
    flags = {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            flag, equals, value = token.partition("=")
            flags[flag] = value if equals else (tokens[i + 1] if i + 1 < len(tokens) else "")
    return flags


STAGES = load_stages()
SCRIPTS = stage_scripts(STAGES)
TRAINING_STAGE = "train"
# Stages that identify the model by the md5 of the training code (its code_md5): an edit that retrains reruns them.
FOLLOWS_TRAINING = ["evaluate", "serve"]


def code_deps(stage: str) -> list[str]:
    return [dep for dep in STAGES[stage].get("deps", []) if dep.startswith("src/")]


def test_every_stage_runs_its_own_script_under_src_stages_and_depends_on_it():
    assert sorted(SCRIPTS) == sorted(STAGES)
    for stage, script in SCRIPTS.items():
        assert script == f"src/stages/{stage}.py"
        assert script in STAGES[stage]["deps"], f"stage {stage!r} does not depend on {script}"
    assert sorted(p.name for p in (PROJECT / "src" / "stages").glob("*.py")) == sorted(f"{stage}.py" for stage in STAGES)


@pytest.mark.parametrize("stage", FOLLOWS_TRAINING)
def test_a_stage_that_follows_training_depends_on_all_the_training_code(stage):
    """Any module whose edit reruns train reruns this stage too: it finds the training run by that code's md5."""
    missing = [dep for dep in code_deps(TRAINING_STAGE) if not covering_deps(code_deps(stage), dep)]
    assert not missing, f"stage {stage!r} would not rerun after an edit that retrains: add {missing} to its deps"


def test_the_model_code_md5_covers_exactly_the_training_code():
    from bts.project import code_md5

    assert code_md5(PROJECT).endswith(".dir")
    assert code_md5(PROJECT, "serve") != code_md5(PROJECT)  # a stage's own code list, not the whole of src/


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_stage_depends_on_every_module_it_imports(stage):
    src, deps = PROJECT / "src", STAGES[stage].get("deps", [])
    closure = script_closure(PROJECT / SCRIPTS[stage], src)
    missing = {name: chain for name, chain in closure.items() if module_file(name, src) is None}
    assert not missing, f"stage {stage!r} imports modules with no file under src/:\n  " + "\n  ".join(
        f"{name} (via {' -> '.join(chain)})" for name, chain in sorted(missing.items())
    )
    uncovered = []
    for name, chain in sorted(closure.items()):
        path = module_file(name, src).relative_to(PROJECT).as_posix()
        if not covering_deps(deps, path):
            uncovered.append(f"{path} (imported via {' -> '.join(chain)})")
    assert not uncovered, f"stage {stage!r} in dvc.yaml does not depend on:\n  " + "\n  ".join(uncovered)


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_stage_depends_on_every_input_it_is_given(stage):
    deps, outs = STAGES[stage].get("deps", []), stage_outs(STAGES[stage])
    uncovered = []
    for flag, value in sorted(cmd_flags(STAGES[stage]).items()):
        if flag not in INPUT_FLAGS or covering_deps(outs, value):  # train's --model is what it writes
            continue
        if flag == "--datasets" and not covering_deps(deps, value):
            uncovered += [f"{flag} {value}/{name}" for name in DATASET_DOCUMENTS if not covering_deps(deps, f"{value}/{name}")]
        elif not covering_deps(deps, value):
            uncovered.append(f"{flag} {value}")
    assert not uncovered, f"stage {stage!r} in dvc.yaml does not depend on its input(s): " + "; ".join(uncovered)


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_every_argument_of_a_stage_is_known_as_input_or_output(stage):
    """A new input argument must be classified here, so that it is checked as a dependency."""
    unknown = sorted(set(cmd_flags(STAGES[stage])) - INPUT_FLAGS - OUTPUT_FLAGS)
    assert not unknown, f"stage {stage!r} passes {', '.join(unknown)}: add each to INPUT_FLAGS or OUTPUT_FLAGS in this test"


# The checker itself, on a made-up package.


@pytest.fixture
def fake_src(tmp_path: Path) -> Path:
    files = {
        "bts/__init__.py": "",
        "bts/errors.py": "import json\n",
        "bts/core.py": "from bts import errors\n",  # a submodule imported by name from its package
        "bts/unused.py": "import bts.errors\n",
        "bts/lib/__init__.py": "from .helpers import helper\n",  # relative import in a package __init__
        "bts/lib/helpers.py": "from ..core import thing\n",
        "bts/lib/deep/__init__.py": "",
        "bts/lib/deep/leaf.py": "def f():\n    from bts.late import g\n",  # an import inside a function counts
        "bts/late.py": "",
        "bts/stage.py": "",
        "stages/job.py": "import pandas\nfrom bts.lib.deep.leaf import f\nfrom bts.stage import run_stage\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_import_closure_follows_every_form_of_import(fake_src):
    closure = script_closure(fake_src / "stages" / "job.py", fake_src)
    assert set(closure) == {
        "bts",
        "bts.stage",
        "bts.lib",
        "bts.lib.deep",
        "bts.lib.deep.leaf",
        "bts.late",
        "bts.lib.helpers",
        "bts.core",
        "bts.errors",
    }
    assert closure["bts.errors"] == ["job.py", "bts.lib.deep.leaf", "bts.lib", "bts.lib.helpers", "bts.core", "bts.errors"]
    assert closure["bts.stage"] == ["job.py", "bts.stage"]


def test_import_closure_reports_a_module_without_a_file(fake_src):
    (fake_src / "bts" / "late.py").write_text("import bts.gone\n")
    closure = script_closure(fake_src / "stages" / "job.py", fake_src)
    assert "bts.gone" in closure
    assert module_file("bts.gone", fake_src) is None


@pytest.mark.parametrize(
    ("dep", "path", "expected"),
    [
        ("src/bts/data", "src/bts/data/ingest.py", True),
        ("src/bts/data", "src/bts/data", True),
        ("src/bts/data", "src/bts/database.py", False),  # a prefix of the name is not a parent folder
        ("src/bts/files.py", "src/bts/files.py", True),
        ("src/stages/train.py", "src/stages/evaluate.py", False),
    ],
)
def test_covers(dep, path, expected):
    assert covers(dep, path) is expected


def test_stage_outs_reads_plain_and_optioned_entries():
    stage = {"outs": ["models/model.joblib", {"plots": {"cache": False}}], "metrics": [{"metrics/metrics.json": {"cache": False}}]}
    assert stage_outs(stage) == ["models/model.joblib", "plots", "metrics/metrics.json"]


def test_cmd_flags_reads_both_argument_forms():
    stage = {"cmd": "PYTHONPATH=src python src/stages/x.py --raw data/interim/raw.parquet --out=data/o.parquet --flag"}
    assert cmd_flags(stage) == {"--raw": "data/interim/raw.parquet", "--out": "data/o.parquet", "--flag": ""}
