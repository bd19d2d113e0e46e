"""The tracking layer's pure parts: the gate, alias rules, git batch parsing, refs, content tags, reconciliation text."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from bts.errors import BtsError, ConfigError
from bts.lifecycle.lineage import commits_holding, describe_ref, experiment_refs, split_batch
from bts.lifecycle.reconcile import format_reconciliation, problems_found
from bts.lifecycle.references import check_alias
from bts.lifecycle.registry import Gate
from bts.project import find_root, pipeline_argument
from bts.tracking.runs import content_tags, model_lineage, params_md5, table_schema
from bts.tracking.store import store_failure
from bts.tracking.tags import data_tags, dataset_document_path, training_process_gone, training_process_tag


@pytest.mark.parametrize(
    ("direction", "challenger", "holder", "better"),
    [("min", 0.5, 0.7, True), ("min", 0.7, 0.5, False), ("min", 0.5, 0.5, False), ("max", 0.3, 0.2, True), ("max", 0.2, 0.3, False)],
)
def test_the_gate_wants_strictly_better_in_its_direction(direction: str, challenger: float, holder: float, better: bool) -> None:
    gate = Gate("test.h1.rmse", direction)
    assert gate.better(challenger, holder) is better
    assert gate.describe() == ("lower is better" if direction == "min" else "higher is better")


@pytest.mark.parametrize("alias", ["champion", "candidate", "prod-eu", "shadow_2"])
def test_plain_word_aliases_are_accepted(alias: str) -> None:
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["latest", "v3", "bad alias!", "", "Champion", "-x", "a" * 65])
def test_reserved_and_malformed_aliases_are_refused(alias: str) -> None:
    with pytest.raises(ConfigError, match="use a lowercase word of letters, digits, '-' or '_'"):
        check_alias(alias)


def test_commits_holding_matches_output_md5s_only_not_the_same_text_elsewhere(tmp_path: Path) -> None:
    """A lock whose text holds the md5 as a dependency's, or in a comment, is no match: outputs only count."""
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "T")
    md5 = "d" * 32
    locks = [
        f"# {md5}\nschema: '2.0'\nstages:\n  train:\n    deps:\n    - path: data/f.parquet\n      md5: {md5}\n",
        f"schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: models/m.joblib\n      md5: {md5}\n",
    ]
    shas = []
    for lock in locks:
        (tmp_path / "dvc.lock").write_text(lock)
        git(tmp_path, "add", "dvc.lock")
        git(tmp_path, "commit", "-q", "-m", "lock")
        shas.append(git(tmp_path, "rev-parse", "HEAD"))
    assert [c["commit"] for c in commits_holding(tmp_path, [md5])] == [shas[1]]
    assert commits_holding(tmp_path, [md5, "e" * 32]) == []
    assert commits_holding(tmp_path, [md5, 12345]) == []  # a tampered package's lineage: no match, no crash
    conflicted = f"<<<<<<< HEAD\n{locks[1]}=======\n{locks[1]}>>>>>>> other\n"  # every md5 in it, yet no dvc.lock
    (tmp_path / "dvc.lock").write_text(conflicted)
    git(tmp_path, "commit", "-q", "-am", "conflict committed")
    assert [c["commit"] for c in commits_holding(tmp_path, [md5])] == [shas[1]]


def test_split_batch_reads_bodies_by_byte_size_whatever_their_characters() -> None:
    first = "path: data/external/trạm-Vĩnh-Long.csv\n".encode()
    second = b"md5: abc\n"
    output = b"1111 blob %d\n" % len(first) + first + b"\n" + b"2222 missing\n" + b"3333 blob %d\n" % len(second) + second + b"\n"
    assert split_batch(output) == [first, None, second]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_commits_holding_finds_md5s_in_a_non_ascii_dvc_lock(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "T")
    lock = "schema: '2.0'\nstages:\n  ingest:\n    outs:\n    - path: data/external/trạm-Vĩnh-Long.csv\n      md5: {}\n"
    shas = []
    for md5 in ["a" * 32, "b" * 32]:
        (tmp_path / "dvc.lock").write_text(lock.format(md5), encoding="utf-8")
        git(tmp_path, "add", "dvc.lock")
        git(tmp_path, "commit", "-q", "-m", md5[:1])
        shas.append(git(tmp_path, "rev-parse", "HEAD"))
    assert [c["commit"] for c in commits_holding(tmp_path, ["a" * 32])] == [shas[0]]
    assert [c["commit"] for c in commits_holding(tmp_path, ["b" * 32])] == [shas[1]]
    assert commits_holding(tmp_path, ["c" * 32]) == []
    git(tmp_path, "update-ref", f"refs/exps/{shas[0][:2]}/{shas[0][2:]}/lucky-fox", shas[1])
    assert experiment_refs(tmp_path) == {"lucky-fox": {"ref": f"refs/exps/{shas[0][:2]}/{shas[0][2:]}/lucky-fox", "baseline": shas[0]}}


def test_refs_are_described_by_kind() -> None:
    assert describe_ref("refs/heads/main") == {"kind": "branch", "name": "main"}
    assert describe_ref("refs/tags/v1") == {"kind": "tag", "name": "v1"}
    assert describe_ref(f"refs/exps/ab/{'c' * 38}/lucky-fox") == {"kind": "dvc-experiment", "name": "lucky-fox"}
    assert describe_ref("refs/exps/celery/stash") is None


def test_content_tags_name_a_model_by_what_it_is() -> None:
    tags = {"data.raw_md5": "r", "data.clean_md5": "c", "data.features_md5": "f", "schema.raw_md5": "s"}
    lineage = model_lineage(tags, {"train.alpha": 0.1}, "m", "code")
    assert lineage == {
        "data.raw_md5": "r",
        "data.clean_md5": "c",
        "data.features_md5": "f",
        "schema.raw_md5": "s",
        "params_md5": params_md5({"train.alpha": 0.1}),
        "model_md5": "m",
        "code_md5": "code",
    }
    assert content_tags(lineage) == {
        "model_md5": "m",
        "params_md5": params_md5({"train.alpha": 0.1}),
        "code_md5": "code",
        "data.features_md5": "f",
    }
    assert params_md5({"a": 1, "b": 2}) == params_md5({"b": 2, "a": 1})


PROJECT = Path(__file__).resolve().parents[2]


def test_the_project_is_found_from_any_folder_inside_it_and_paths_come_from_dvc_yaml(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert find_root(PROJECT / "src" / "bts") == PROJECT
    with pytest.raises(BtsError, match=r"not inside a BTS project: no dvc\.yaml in"):
        find_root(tmp_path)
    assert pipeline_argument(PROJECT, "serve", "--package") == "models/package"
    assert dataset_document_path(PROJECT, "features") == "metadata/datasets/features.json"
    with pytest.raises(BtsError, match="stage 'serve' has no --nothing argument"):
        pipeline_argument(PROJECT, "serve", "--nothing")
    tags = data_tags(PROJECT / "metadata/datasets")
    assert tags["data.features_path"] == "data/processed/features.parquet" and len(tags["data.features_md5"]) == 32


def test_the_reconciliation_names_each_problem_and_its_fix() -> None:
    report = {
        "store": "mlflow.db",
        "experiment": "bts",
        "matched": ["a"],
        "experiments_without_run": ["lost-exp"],
        "runs_without_experiment": [{"run_id": "r1", "exp_name": "gone", "params": {"train.alpha": "0.1"}}],
        "runs_left_running": [{"run_id": "r2", "name": "killed"}],
        "runs_without_metrics": [{"run_id": "r3", "name": "unevaluated"}],
        "versions": [{"version": "4", "problem": "registration incomplete"}],
        "interrupted_experiment": [],
    }
    text = format_reconciliation(report)
    assert text.startswith("DVC experiments vs MLflow runs of 'bts' in mlflow.db: 1 matched")  # the store it read, first
    assert problems_found(report)
    assert "  lost-exp" in text
    assert "  gone  run r1  to run it again: dvc exp run -S train.alpha=0.1" in text
    assert "1 run(s) left RUNNING by a training that died" in text and "bts runs check --mark-failed" in text
    assert "  r3  unevaluated" in text and "version 4: registration incomplete" in text
    clean = {**report, "experiments_without_run": [], "runs_without_experiment": [], "runs_left_running": [], "runs_without_metrics": []}
    clean["versions"] = []
    assert not problems_found(clean) and format_reconciliation(clean).endswith("nothing lost")


def test_table_schema_is_the_schema_mlflow_infers() -> None:
    """The training dataset's schema is built without MLflow's per-value scan, and must be the very same schema."""
    from mlflow.types.utils import _infer_schema

    frame = pd.DataFrame(
        {
            "lag_1": [1.0, 2.0, 3.0],
            "lag_2": [1.0, float("nan"), 3.0],
            "station": ["a", None, "c"],
            "count": np.array([1, 2, 3], dtype="int64"),
            "small": np.array([1, 2, 3], dtype="int32"),
            "flag": [True, False, True],
            "target": [0.1, 0.2, 0.3],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns
        expected = _infer_schema(frame)
        built = table_schema(frame)
    assert built.to_json() == expected.to_json()
    assert [spec.required for spec in built.inputs] == [True, False, False, True, True, True, True]


def test_the_traces_of_a_killed_experiment_are_found_and_a_clean_workspace_has_none(tmp_path) -> None:
    """What a `dvc exp run` killed mid-way leaves: params.yaml staged as DVC rewrote it; DVC's executor refs, which a
    finished experiment leaves too, are no trace."""
    import subprocess

    from bts.lifecycle.reconcile import format_reconciliation, interrupted_experiment

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q", "--allow-empty", "-m", "start")
    (tmp_path / "params.yaml").write_text("train:\n  alpha: 0.1  # a comment\n")
    git("add", "params.yaml")
    git("-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q", "-m", "params")
    assert interrupted_experiment(tmp_path) == []
    git("update-ref", "refs/exps/exec/EXEC_HEAD", "HEAD")  # as any experiment run here leaves it
    assert interrupted_experiment(tmp_path) == []
    (tmp_path / "params.yaml").write_text("train:\n  alpha: 0.3\n")
    git("add", "params.yaml")
    traces = interrupted_experiment(tmp_path)
    assert traces == ["params.yaml staged in git"]
    report = {key: [] for key in ("experiments_without_run", "runs_without_experiment", "runs_left_running", "runs_without_metrics")}
    report.update(store="mlflow.db", experiment="e", matched=[], versions=[], interrupted_experiment=traces)
    text = format_reconciliation(report)
    assert "a `dvc exp run` did not finish here (params.yaml staged in git):" in text
    assert "git restore --staged --worktree params.yaml" in text and "nothing lost" not in text


def test_a_training_process_is_gone_when_its_pid_ended_or_was_recycled_and_unknown_on_another_host() -> None:
    tag = training_process_tag()
    assert training_process_gone(tag) is False  # this very process
    host, pid, started = tag.split(":")
    child = subprocess.Popen(["true"])
    child.wait()
    assert training_process_gone(f"{host}:{child.pid}:{started}") is True  # ended
    assert training_process_gone(f"{host}:{pid}:{float(started) - 10:.3f}") is True  # the pid now runs another process
    assert training_process_gone(f"another-{host}:{child.pid}:{started}") is False  # not ours to judge
    assert training_process_gone(None) is False and training_process_gone("garbage") is False


LOCAL = "sqlite:///mlflow.db"  # a store no probe asks: the error alone names the cause


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (MlflowException("API request failed: 500 != 200. Response body: '(psycopg2.OperationalError) connection to server'"),
         "cannot reach its database"),
        (MlflowException("API request failed"), "failed: API request failed"),
    ],
)  # fmt: skip
def test_a_store_failure_is_named_by_its_cause(error: Exception, said: str) -> None:
    assert store_failure(error, LOCAL) == said


def test_a_refused_connection_under_mlflows_error_is_named_as_such() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as refused:
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed") from refused
    except MlflowException as error:
        assert store_failure(error, LOCAL) == "is unreachable: Connection refused"
