"""Running real commands in a temporary copy of the project, and reading what they leave."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from mlflow.tracking import MlflowClient

PROJECT = Path(__file__).resolve().parents[2]
DATASETS = {"raw": "data/interim/raw.parquet", "clean": "data/interim/clean.parquet", "features": "data/processed/features.parquet"}
BIN = Path(sys.executable).parent  # the virtual environment running the tests


def run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command as a user would, with the project's virtual environment first on PATH."""
    result = subprocess.run(args, cwd=cwd, env=user_env(env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def bts(args: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`bts <args>` run by this test process, as its console script runs it from cwd: `bts.cli.main` with the command's
    environment, stdout, stderr and exit code (a traceback, if any, in stderr with exit code 1). For the commands whose
    process is not what a test is about: each new `bts` process pays about 3 s of imports (MLflow, its SQL store),
    which this process has paid once. A command the test kills, serves, or runs beside another stays a process (`run`);
    the walkthrough test runs every command it shows as one.

    What a new process would start without is reset around each call: the working folder, the environment, MLflow's
    tracking URI and its cache of artifact stores by run id (copies of one workspace share run ids), the remote stores
    already probed; and MLflow's log level is what `bts` gives a new process (WARNING, or MLFLOW_LOGGING_LEVEL)."""
    import contextlib
    import io
    import logging
    import traceback

    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from bts.cli import main
    from bts.tracking.store import _checked_stores as checked_stores

    saved_environment, saved_folder = dict(os.environ), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    mlflow_logger = logging.getLogger("mlflow")
    saved_level = mlflow_logger.level
    try:
        os.environ.update(user_env(env))
        os.chdir(cwd)
        mlflow_logger.setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"))
        tracking_utils._artifact_repos_cache.clear()  # what this process read of another copy's runs
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exit:  # argparse's usage errors
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_folder)
        os.environ.clear()
        os.environ.update(saved_environment)
        mlflow_logger.setLevel(saved_level)
        mlflow.set_tracking_uri(None)
        tracking_utils._artifact_repos_cache.clear()
        checked_stores.clear()
    result = subprocess.CompletedProcess(["bts", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"bts {' '.join(args)} exited {code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_queue(repo: Path, env: dict | None = None, jobs: int = 2, timeout: float = 1200) -> str:
    """The queued experiments run as the walkthrough runs them, `dvc queue start -j <jobs>` with its output in DVC's log
    folder, and `dvc queue status` once nothing is queued or running.

    `dvc queue start` leaves its workers running in the background: given a pipe, they would hold it open, and a
    worker whose idle monitor asked for its shutdown while its task still ran (a race of DVC's queue) stays up for
    good. Workers still up once the queue is done are stopped here, so none outlives the test.
    """
    run(["bash", "-c", f"dvc queue start -j {jobs} > .dvc/tmp/queue.log 2>&1"], repo, env=env)
    deadline = time.monotonic() + timeout
    while True:
        status = run(["dvc", "queue", "status"], repo, env=env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, f"queue still busy after {timeout} s:\n{status}"
        time.sleep(3)
    for pid_file in (repo / ".dvc/tmp/exps/celery").glob("*.pid"):
        try:
            worker = psutil.Process(int(pid_file.read_text()))
            if "queue-worker" in worker.cmdline():
                worker.terminate()
                worker.wait(30)
        except (ValueError, psutil.Error):
            pass  # gone already
    return status


EXTERNAL = "data/external/"
EXTERNAL_KEPT = {"data/external/README.md", "data/external/.gitignore"}
# What listing real exports changes beside data.sources (the walkthrough's "Real exports"): the exports' .dvc files and
# data/external/.gitignore, and what the pipeline then writes into git.
DATA_STATE = ["data/external", "dvc.lock", "metadata/datasets", "metadata/schemas", "metrics", "plots"]
DEFAULT_SOURCES = ["simulated"]


def project_files() -> list[str]:
    """The project's files as git sees them, without the real exports a user may have added under data/external."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    return [f for f in listed.stdout.splitlines() if (PROJECT / f).is_file() and (not f.startswith(EXTERNAL) or f in EXTERNAL_KEPT)]


def sources_at(revision: str | None) -> list:
    """data.sources of the project's params.yaml in the working tree (None) or at a git revision."""
    if revision is None:
        text = (PROJECT / "params.yaml").read_text()
    else:
        text = subprocess.run(["git", "show", f"{revision}:params.yaml"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(text)["data"]["sources"]


def defaults_revision() -> str:
    """The newest commit of the project that runs on the embedded simulated data alone: HEAD, unless real exports were
    committed since (its data state is what a copy on the defaults rebuilds)."""
    revisions = subprocess.run(["git", "rev-list", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout.split()
    for revision in revisions:  # newest first
        if sources_at(revision) == DEFAULT_SOURCES:
            return revision
    raise AssertionError("no commit of the project runs on data.sources [simulated]: the tests need one to start from")


def copy_project_on_defaults(repo: Path) -> None:
    """The project's files (as in the working tree) at `repo`, on its simulated data: where the user listed real exports
    in data.sources (the walkthrough's "Real exports", committed or not), the copy lists `simulated` alone and holds the
    DATA_STATE of the newest commit on the defaults, so that it rebuilds what its dvc.lock says. Real exports are never
    copied: tests that need one bring their own."""
    for name in project_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, target)
    if sources_at(None) == DEFAULT_SOURCES:
        return
    set_params(repo, "data", "sources", DEFAULT_SOURCES)
    for name in DATA_STATE:
        path = repo / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    archive = subprocess.run(["git", "archive", defaults_revision(), *DATA_STATE], cwd=PROJECT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive.stdout, check=True)


def model_md5(repo: Path) -> str:
    return lock_outs(repo / "dvc.lock")["models/model.joblib"]


def training_run(repo: Path, md5: str | None = None):
    """The newest run that trained the model dvc.lock records (found by its content tag, as the stages find it)."""
    client = store(repo)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.model_md5 = '{md5 or model_md5(repo)}'"
    )
    assert runs, f"no run trained model {md5 or model_md5(repo)}"
    return max(runs, key=lambda r: r.info.start_time)


def lock_outs(lock_path: Path, stages: list[str] | None = None, text: str | None = None) -> dict[str, str]:
    """{output path: md5} of the stages (all by default) in a dvc.lock file, or in its text."""
    lock = yaml.safe_load(lock_path.read_text() if text is None else text)
    return {
        out["path"]: out["md5"]
        for name, stage in lock["stages"].items()
        if stages is None or name in stages
        for out in stage.get("outs", [])
    }


def with_test_venv(repo: Path) -> Path:
    """repo with a .venv that is the test's (already set up): `make` installs nothing."""
    venv = repo / ".venv"
    venv.mkdir()
    for name in ("bin", "lib", "lib64", "include", "pyvenv.cfg"):
        if (BIN.parent / name).exists():
            (venv / name).symlink_to(BIN.parent / name)
    (venv / ".installed").touch()  # newer than requirements.lock and pyproject.toml: `make` installs nothing
    return repo


def as_first_committed(repo: Path, folder: str) -> dict[str, bytes]:
    """{path: bytes} of the files under folder (or the one file) in the repository's first commit: a copy of the project
    (make_project_repo) as it was made, before any stage ran in it."""
    first = run(["git", "rev-list", "--max-parents=0", "HEAD"], repo).stdout.strip()
    names = run(["git", "ls-tree", "-r", "--name-only", first, folder], repo).stdout.split()
    return {name: subprocess.run(["git", "show", f"{first}:{name}"], cwd=repo, capture_output=True, check=True).stdout for name in names}


def set_params(repo: Path, section: str, key: str, value: object) -> None:
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params[section][key] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def store(repo: Path) -> MlflowClient:
    """A client on the repository's own MLflow store, where its stages log."""
    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def copy_workspace(source: Path, target: Path) -> None:
    """A copy of a user's workspace: files, git, DVC cache, and the MLflow store pointed at the copy's artifacts."""
    shutil.copytree(source, target, symlinks=True)
    with sqlite3.connect(target / "mlflow.db") as db:
        for (table,) in db.execute("select name from sqlite_master where type = 'table'").fetchall():
            for _, column, kind, *_ in db.execute(f"pragma table_info({table})").fetchall():
                if kind.upper().startswith(("VARCHAR", "TEXT")):
                    db.execute(
                        f"update {table} set {column} = replace({column}, ?, ?) where {column} like ?",
                        (str(source), str(target), f"%{source}%"),
                    )


def stopped_stage(script: str, cwd: Path, timeout: float = 600, started: subprocess.Popen | None = None) -> psutil.Process:
    """The process running this stage script in cwd once it has stopped itself at its stop point (STOP_POINT_VARIABLE);
    fails if `started` (what runs the stage) ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert started is None or started.poll() is None, f"{' '.join(started.args)} ended before {script} stopped"
        for process in psutil.process_iter(["cmdline", "status", "cwd"]):
            found = script in " ".join(process.info["cmdline"] or []) and process.info["cwd"] == str(cwd.resolve())
            if found and process.info["status"] == psutil.STATUS_STOPPED:
                return process
        time.sleep(0.2)
    raise AssertionError(f"no process running {script} in {cwd} stopped within {timeout} s")


def user_env(extra: dict | None = None) -> dict:
    """The environment `run` gives a command, for one started with subprocess.Popen."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(extra or {})}


def commit_all(repo: Path, message: str) -> str:
    """Everything in the repository committed (an empty commit when nothing changed); the new commit's id."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def lineage_json(repo: Path, ref: str) -> dict:
    return json.loads(bts(["lineage", ref, "--json"], repo).stdout)
