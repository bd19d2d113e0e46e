"""Team mode, nothing mocked: a real PostgreSQL and a real `mlflow server` on it (bts.team), a DVC remote, a git remote.

The module starts PostgreSQL and the tracking server once (free ports, a temporary folder, torn down at the end);
every command runs with only MLFLOW_TRACKING_URI pointing at the server. PostgreSQL's server binaries must be
installed (`make postgres`, which `make test` runs): without them these tests fail, they are not skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.tracking import MlflowClient
from urllib3.util.retry import RequestHistory, Retry

from bts import team
from bts.errors import BtsError
from bts.hashing import file_md5
from bts.kill_points import STOP_POINT_VARIABLE
from bts.tracking.store import BULK_READ_DATABASE
from tests.integration.conftest import make_project_repo
from tests.integration.workspace import (
    DATASETS,
    PROJECT,
    bts,
    copy_workspace,
    lock_outs,
    run,
    run_queue,
    set_params,
    stopped_stage,
    user_env,
    with_test_venv,
)

pytestmark = pytest.mark.integration

EXPERIMENT = "bts-next-reading"
MODEL = "bts-next-reading"
GRID = ["-S", "train.alpha=0.1,0.3", "-S", "train.l1_ratio=0.2"]  # two points, queued and run by two workers at once
GRID_POINTS = {("0.1", "0.2"), ("0.3", "0.2")}
DATA_STAGES = ["simulate", "ingest", "clean", "featurize"]


def default_client_retry_seconds() -> float:
    """What MLflow's HTTP client, left to its defaults, sleeps between its retries before it gives up on a server."""
    retries, factor = MLFLOW_HTTP_REQUEST_MAX_RETRIES.default, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.default
    failure = RequestHistory("GET", "/", None, None, None)
    return sum(Retry(total=retries, backoff_factor=factor, history=(failure,) * k).get_backoff_time() for k in range(1, retries + 1))


@pytest.fixture(scope="module")
def server() -> Iterator[team.Team]:
    """PostgreSQL and `mlflow server` for the module, in a folder PostgreSQL's user can reach (pytest's base is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="bts-team-test-"))
    folder.chmod(0o755)  # run as root, PostgreSQL runs as its own user, who must reach its data folder
    try:
        try:
            setup = team.start(folder)  # no PostgreSQL installed: the tests fail here, never skip
        except BtsError as exc:
            pytest.fail(f"team mode could not start: {exc}")
        yield setup
    finally:
        team.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the repository, its clones, and the DVC and git remotes."""
    return tmp_path_factory.mktemp("team")


def use_dvc_remote(clone: Path, work: Path) -> None:
    """Point the clone's `shared` remote at the test's folder (as a user whose share is mounted elsewhere would), before
    any push or fetch: an absolute path, since DVC resolves a relative one wrongly for other revisions (dvc 10054)."""
    run(["dvc", "remote", "modify", "--local", "shared", "url", str(work / "dvc-remote")], clone)


@pytest.fixture(scope="module")
def team_repo(server: team.Team, work: Path) -> dict:
    """A colleague's repository: the pipeline run against the server (one commit), version 1 registered, a queued
    2-point grid run, every data version pushed to the DVC remote and the branch to a bare git remote."""
    env = {"MLFLOW_TRACKING_URI": server.tracking_uri}
    repo = make_project_repo(work / "repo")
    set_params(repo, "train", "model", "elasticnet")  # the grid's alpha and l1_ratio are its params; and it trains in a second
    use_dvc_remote(repo, work)
    run(["dvc", "repro"], repo, env=env)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--amend", "-m", "project with its pipeline results"], repo)  # the one commit records this run
    registered = bts(["register"], repo, env=env).stdout
    again = bts(["register"], repo, env=env).stdout

    run(["dvc", "exp", "run", "--queue", *GRID], repo, env=env)
    status = run_queue(repo, env)
    run(["dvc", "push"], repo)
    origin = work / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], work)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    return {"repo": repo, "env": env, "registered": registered, "again": again, "queue": status, "origin": origin}


def test_pipeline_grid_and_registry_land_on_the_server_with_their_lineage(server: team.Team, team_repo: dict) -> None:
    repo, env = team_repo["repo"], team_repo["env"]
    assert team_repo["queue"].count("Success") == len(GRID_POINTS) and "Failed" not in team_repo["queue"], team_repo["queue"]
    assert team_repo["registered"].startswith(f"registered: models:/{MODEL}/1 ")
    assert team_repo["again"].startswith(f"already registered: models:/{MODEL}/1 ")  # idempotent without a local lock
    card = f"models/cards/{team.HOST}-{server.server_port}/{MODEL}-1.md"  # the server's cards apart from the local store's
    assert team_repo["registered"].rstrip().endswith(f"model card {card}") and (repo / card).is_file()
    assert not (repo / f"models/cards/{MODEL}-1.md").exists()
    assert list(repo.rglob("mlflow.db")) == [] and not (repo / "mlartifacts").exists()  # nothing went to a local store

    client = MlflowClient(tracking_uri=server.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's proxied store, not a client's folder
    runs = client.search_runs([experiment.experiment_id])
    names = set(run(["dvc", "exp", "list", "--name-only"], repo).stdout.split())
    assert len(names) == len(GRID_POINTS) and len(runs) == len(GRID_POINTS) + 1
    assert {r.data.tags.get("dvc.exp_name") for r in runs} == {*names, None}
    grid = {(r.data.params["train.alpha"], r.data.params["train.l1_ratio"]) for r in runs if r.data.tags.get("dvc.exp_name")}
    assert grid == GRID_POINTS
    md5s = lock_outs(repo / "dvc.lock")
    for logged in runs:
        inputs = {i.dataset.name: i.dataset.digest for i in logged.inputs.dataset_inputs}
        assert inputs == {f"bts-{name}": md5s[path] for name, path in DATASETS.items()}
        assert "test.h1.rmse" in logged.data.metrics and logged.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(logged.info.run_id, "package")]  # read back through the server
        stored = Path(server.artifacts) / EXPERIMENT / logged.info.run_id / "artifacts" / "package" / "MLmodel"
        assert stored.is_file()  # and kept by the server, where every client finds it

    version = client.get_model_version(MODEL, "1")
    baseline = next(r for r in runs if not r.data.tags.get("dvc.exp_name"))
    assert version.run_id == baseline.info.run_id and version.tags["package.md5"] == md5s["models/package"]
    chain = json.loads(bts(["lineage", f"models:/{MODEL}/1", "--json"], repo, env=env).stdout)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert chain["package"]["problems"] == [] and chain["run"]["run_id"] == baseline.info.run_id
    assert [c["commit"] for c in chain["commits"]] == [head]
    assert {r["name"] for r in chain["first_commit"]["refs"]} >= {"main", *names}

    check = bts(["runs", "check"], repo, env=env)
    assert f"{len(GRID_POINTS)} matched" in check.stdout and "nothing lost" in check.stdout
    compared = bts(["compare"], repo, env=env).stdout
    assert f"{len(GRID_POINTS) + 1} runs on the workspace's data" in compared, compared
    # With the server's database named, the same answers read with SQL (the package through the server's artifacts).
    reading = {**env, BULK_READ_DATABASE: server.reader_uri, "PGPASSFILE": str(server.password_file)}
    assert json.loads(bts(["lineage", f"models:/{MODEL}/1", "--json"], repo, env=reading).stdout) == chain
    assert bts(["runs", "check"], repo, env=reading).stdout == check.stdout
    assert bts(["compare"], repo, env=reading).stdout == compared
    assert list(repo.rglob("mlflow.db")) == []


def test_a_fresh_clone_pulls_every_version_and_reproduces_a_past_model_without_the_data_stages(
    server: team.Team, team_repo: dict, work: Path
) -> None:
    repo, env = team_repo["repo"], team_repo["env"]
    first = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    first_model = lock_outs(repo / "dvc.lock")["models/model.joblib"]
    # A second version: a grid experiment taken into the branch, its data pushed as any run's would be.
    best = sorted(run(["dvc", "exp", "list", "--name-only"], repo).stdout.split())[0]
    run(["dvc", "exp", "apply", best], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", f"take experiment {best}"], repo)
    run(["dvc", "push"], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    assert lock_outs(repo / "dvc.lock")["models/model.joblib"] != first_model

    clone = work / "fresh-clone"
    run(["git", "clone", "-q", str(team_repo["origin"]), str(clone)], work)
    use_dvc_remote(clone, work)
    pulled = run(["dvc", "pull", "--all-commits"], clone)
    assert "Traceback" not in pulled.stdout + pulled.stderr
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."
    run(["git", "checkout", "-q", first], clone)
    run(["dvc", "checkout"], clone)
    assert file_md5(clone / "models/model.joblib") == first_model  # the past model, from the remote, nothing rebuilt
    assert run(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."
    run(["git", "checkout", "-q", "main"], clone)
    run(["dvc", "checkout"], clone)

    reproduced = run(["bts", "reproduce", f"models:/{MODEL}/1"], clone, env=env)
    assert "verdict: REPRODUCED" in reproduced.stdout and "DIFF" not in reproduced.stdout
    assert "data: restored from the DVC cache, every md5 verified" in reproduced.stderr
    ran = {line.split("|", 1)[1].split(":")[0].strip() for line in reproduced.stderr.splitlines() if line.startswith("  | ")}
    assert ran == {"train", "evaluate", "serve"}, reproduced.stderr  # no data stage ran
    assert list(clone.rglob("mlflow.db")) == []


def test_an_experiment_pushed_by_one_clone_is_seen_with_its_ref_from_another(server: team.Team, team_repo: dict, work: Path) -> None:
    repo, env = team_repo["repo"], team_repo["env"]
    name = sorted(run(["dvc", "exp", "list", "--name-only", "-A"], repo).stdout.split())[-1]
    run(["dvc", "exp", "push", "origin", name], repo, env=env)

    colleague = work / "colleague"
    run(["git", "clone", "-q", str(team_repo["origin"]), str(colleague)], work)
    use_dvc_remote(colleague, work)
    assert name not in run(["dvc", "exp", "show", "-A", "--csv"], colleague).stdout
    run(["dvc", "exp", "pull", "origin", name], colleague, env=env)
    shown = run(["dvc", "exp", "show", "-A", "--csv"], colleague).stdout
    assert any(row.startswith(f"{name},") for row in shown.splitlines()), shown

    client = MlflowClient(tracking_uri=server.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (logged,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`dvc.exp_name` = '{name}'")
    lineage = bts(["lineage", logged.info.run_id], colleague, env=env).stdout
    assert f"DVC experiment {name}" in lineage
    assert re.search(rf"^\s+in: .*dvc-experiment {re.escape(name)}\b", lineage, re.MULTILINE), lineage


def test_the_train_stage_fails_fast_with_one_line_when_the_server_or_its_database_is_down(server: team.Team, team_repo: dict) -> None:
    repo, env = team_repo["repo"], team_repo["env"]
    lock_before = (repo / "dvc.lock").read_bytes()
    client = MlflowClient(tracking_uri=server.tracking_uri)
    runs_before = len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]))
    causes = {
        "server": (lambda: team.stop_server(server), f"{server.tracking_uri} is unreachable: Connection refused"),
        "database": (
            lambda: team.stop_postgres(server, team.postgres_binaries()),
            f"{server.tracking_uri} cannot reach its database: (psycopg2.OperationalError) connection to server at",
        ),
    }
    try:
        for stop, expected in causes.values():
            stop()
            started = time.monotonic()
            failed = run(["dvc", "repro", "--force", "--single-item", "train"], repo, check=False, env=env)
            elapsed = time.monotonic() - started
            errors = [line for line in failed.stderr.splitlines() if line.startswith("train: error:")]
            assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
            assert len(errors) == 1 and expected in errors[0], failed.stderr
            # Fails on the first refusal: MLflow's own client would sleep minutes between retries first (timings
            # themselves are benchmarks' business; this only tells one probe from a retry loop).
            assert elapsed < default_client_retry_seconds(), f"the stage took {elapsed:.1f} s to fail: it retried"
            assert (repo / "dvc.lock").read_bytes() == lock_before
            assert not list((repo / "models").glob(".model.joblib.*.tmp"))  # nothing half-written
            team.start(Path(server.folder))  # back up, on the same ports
    finally:
        team.start(Path(server.folder))
    assert len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])) == runs_before  # no stray run


def test_a_server_or_database_killed_mid_training_leaves_one_line_and_a_run_runs_check_reports(server: team.Team, team_repo: dict) -> None:
    repo, env = team_repo["repo"], team_repo["env"]
    lock_before = (repo / "dvc.lock").read_bytes()
    client = MlflowClient(tracking_uri=server.tracking_uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    causes = {
        # as running now: an earlier test may have restarted them (team.start records the new server in the folder)
        "server": (lambda: team.stop_server(team.load_state(Path(server.folder))), "is unreachable: Connection refused"),
        "database": (lambda: team.stop_postgres(server, team.postgres_binaries()), "cannot reach its database"),
    }
    try:
        for kill, expected in causes.values():
            training = subprocess.Popen(
                ["dvc", "repro", "--force", "--single-item", "train"],
                cwd=repo,
                env=user_env({**env, STOP_POINT_VARIABLE: "run-started"}),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            stage = stopped_stage("src/stages/train.py", repo, started=training)  # its run has just started on the server
            kill()
            started = time.monotonic()
            stage.resume()
            _, stderr = training.communicate(timeout=600)
            elapsed = time.monotonic() - started
            errors = [line for line in stderr.splitlines() if line.startswith("train: error:")]
            assert training.returncode != 0 and "Traceback" not in stderr, stderr
            assert len(errors) == 1 and expected in errors[0] and "left RUNNING there" in errors[0], stderr
            assert elapsed < default_client_retry_seconds(), f"the stage took {elapsed:.1f} s to fail: it retried"
            assert (repo / "dvc.lock").read_bytes() == lock_before
            left = re.search(r"during run ([0-9a-f]{32})", errors[0]).group(1)

            team.start(Path(server.folder))  # back: the run the dead training left is RUNNING, and reported as such
            assert client.get_run(left).info.status == "RUNNING"
            check = bts(["runs", "check"], repo, check=False, env=env)
            assert check.returncode == 1 and "left RUNNING by a training that died" in check.stdout, check.stdout
            assert re.search(rf"^\s+{left}\b", check.stdout, re.MULTILINE), check.stdout
            bts(["runs", "check", "--mark-failed"], repo, check=False, env=env)
            assert client.get_run(left).info.status == "FAILED"
    finally:
        team.start(Path(server.folder))
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_id for r in running]


def test_team_mode_listens_on_loopback_alone_and_asks_every_role_for_a_password_kept_out_of_files_and_logs(
    server: team.Team, team_repo: dict, work: Path
) -> None:
    import psycopg2

    assert (server.pgdata / "pg_hba.conf").read_text() == team.HBA  # TCP on loopback, SCRAM for every role: nothing else
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
    secret = team.passwords(server)
    connect = {"host": team.HOST, "port": server.postgres_port, "dbname": team.DATABASE, "passfile": os.devnull}
    for role in (team.DATABASE_USER, team.READER):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(user=role, **connect).close()  # no password: refused
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(user=role, password=secret[role] + "x", **connect).close()
    with psycopg2.connect(user=team.DATABASE_USER, password=secret[team.DATABASE_USER], **connect) as db, db.cursor() as cursor:
        cursor.execute("SHOW listen_addresses")
        assert cursor.fetchone() == (team.HOST,)
        cursor.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN %s", ((team.DATABASE_USER, team.READER),))
        stored = dict(cursor.fetchall())
    db.close()
    assert stored.keys() == {team.DATABASE_USER, team.READER}
    assert all(value.startswith("SCRAM-SHA-256$") for value in stored.values()), stored
    listening = {
        (c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port in
        (server.postgres_port, server.server_port)
    }  # fmt: skip
    assert listening == {(team.HOST, server.postgres_port), (team.HOST, server.server_port)}

    # The passwords are in the password file alone: not in the repositories, remotes, logs, state or any command line.
    places = [path for root in (work, Path(server.folder)) for path in root.rglob("*") if path.is_file() and not path.is_symlink()]
    places = [path for path in places if path != server.password_file]
    assert any(path.name == "mlflow-server.log" for path in places) and any(path.name == "postgres.log" for path in places)
    for password in secret.values():
        assert [path for path in places if password.encode() in path.read_bytes()] == []
        assert [p.pid for p in psutil.process_iter(["cmdline"]) if password in " ".join(p.info["cmdline"] or [])] == []


def team_recipe() -> list[str]:
    """The team-mode page's recipe up to `dvc push`, its commands as the page shows them (comments dropped)."""
    block = [line[4:] for line in (PROJECT / "docs/team-mode.md").read_text().splitlines() if line.startswith("    ")]
    start = next(i for i, line in enumerate(block) if line.startswith('eval "$(make -s team-up)"'))
    end = next(i for i, line in enumerate(block) if line.strip() == "dvc push")
    return [line.split("  #")[0].strip() for line in block[start : end + 1]]


def test_the_team_recipe_on_an_up_to_date_repository_pushes_commits_nothing_else_and_keeps_both_stores_cards(
    pipeline_build: Path,
) -> None:
    """The recipe on a repository whose pipeline already ran against its local store (so `dvc repro` has nothing to do),
    against `make team-up` on ports chosen through the make variables the page names."""
    folder = Path(tempfile.mkdtemp(prefix="bts-team-recipe-"))
    folder.chmod(0o755)  # PostgreSQL's own user must reach .team/ inside the repository
    repo = folder / "repo"
    try:
        copy_workspace(pipeline_build, repo)
        with_test_venv(repo)
        use_dvc_remote(repo, folder)
        local = bts(["register"], repo).stdout  # the local store's version 1 and its card, before team mode
        assert local.startswith(f"registered: models:/{MODEL}/1 ")
        head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
        ports = {"TEAM_POSTGRES_PORT": str(team.free_port()), "TEAM_SERVER_PORT": str(team.free_port())}
        recipe = run(["bash", "-c", "\n".join([*team_recipe(), "bts register"])], repo, check=False, env=ports)
        output = recipe.stdout + recipe.stderr
        chosen = f"PostgreSQL on {team.HOST}:{ports['TEAM_POSTGRES_PORT']} "
        assert chosen in output and f"MLflow server on http://{team.HOST}:{ports['TEAM_SERVER_PORT']} " in output, output
        assert "nothing to commit" in output  # `git commit` says so, and `dvc push` still runs
        assert run(["git", "rev-parse", "HEAD"], repo).stdout.strip() == head
        assert run(["git", "diff", "--cached", "--name-only"], repo).stdout == ""  # nothing else staged
        assert "Cache and remote 'shared' are in sync" in run(["dvc", "status", "--cloud"], repo).stdout
        # The server holds no run of these weights: the advice names the command that trains them there.
        advice = re.search(r"`(dvc repro --force --single-item [a-z ]+)`", output)
        assert recipe.returncode != 0 and advice, output
        again = run(["bash", "-c", f'eval "$(make -s team-up)" && {advice.group(1)} && bts register'], repo, env=ports)
        assert f"registered: models:/{MODEL}/1 " in again.stdout, again.stdout
        assert run(["git", "status", "--porcelain"], repo).stdout == ""  # the same bytes: dvc.lock unchanged, nothing new
        cards = {path.relative_to(repo).as_posix() for path in (repo / "models/cards").rglob("*.json")}
        assert cards == {f"models/cards/{MODEL}-1.json", f"models/cards/{team.HOST}-{ports['TEAM_SERVER_PORT']}/{MODEL}-1.json"}
    finally:
        run(["make", "-s", "team-down"], repo, check=False)
        team.stop(repo / ".team")
        shutil.rmtree(folder, ignore_errors=True)
