"""Team mode on one machine: a PostgreSQL server and an MLflow tracking server on it, run from the repository.

`make team-up` starts both (`python -m bts.team up`): PostgreSQL from the machine's own binaries (`make postgres`
installs the distribution's, pinned, when missing), its data in a git-ignored folder (.team/ at the repository root), on
loopback and a free port; then `mlflow server` on that database, proxying artifacts (`--serve-artifacts`) into
.team/artifacts, so a client needs nothing but the server's URL. It prints the lines to use (on stdout, so that
`eval "$(make -s team-up)"` runs them; the rest goes to stderr):

    export MLFLOW_TRACKING_URI=http://127.0.0.1:<port>
    export BTS_TRACKING_DATABASE_URI=postgresql+psycopg2://mlflow_reader@127.0.0.1:<port>/mlflow   # optional: fast bulk reads
    export PGPASSFILE=<repository>/.team/pgpass

PostgreSQL listens on loopback alone and asks every role for its password (SCRAM): the passwords are made at the first
`up` and kept in .team/pgpass (mode 0600, git-ignored), which libpq reads through PGPASSFILE, so no password is ever in
a URI, a command line, a tracked file or a log.

`make team-down` stops both (`python -m bts.team down`); the data stays for the next `up`. A real team points the
same commands at its own PostgreSQL and object storage instead (README, "Team mode").
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bts.errors import BtsError
from bts.project import find_root
from bts.tracking.store import BULK_READ_DATABASE

TEAM_DIR = ".team"  # at the repository root, git-ignored
STATE_FILE = "team.json"
PASSWORD_FILE = "pgpass"  # libpq's password file format, mode 0600; clients find it through PGPASSFILE
# The whole of pg_hba.conf: TCP on loopback, every role by password (SCRAM); nothing else may connect.
HBA = "# team mode: loopback only, every role by password (SCRAM)\nhost all all 127.0.0.1/32 scram-sha-256\n"
DATABASE = "mlflow"
DATABASE_USER = "postgres"
READER = "mlflow_reader"  # may only read: the role `bts compare` and `bts runs check` query the database as
HOST = "127.0.0.1"
# One worker: each worker opens its database lazily, and one that first meets a refusing database retries for about
# 100 s before it answers; the one worker has opened it before `up` returns, so later refusals are answered at once.
SERVER_WORKERS = 1
START_TIMEOUT_SECONDS = 180  # a first start creates MLflow's tables; slow on a loaded 2-core machine
STOP_TIMEOUT_SECONDS = 20
# PostgreSQL refuses to run as root: as root, its commands run as this system user (the distribution's packages make it).
POSTGRES_SYSTEM_USER = "postgres"
POSTGRES_BINARY_DIRS = ["/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"]  # Debian and Ubuntu; RHEL and Fedora


@dataclass
class Team:
    """Where a running (or stopped) team setup lives and listens."""

    folder: str
    postgres_port: int
    server_port: int
    server_pid: int | None = None

    @property
    def backend_uri(self) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project pins psycopg2.
        return f"postgresql+psycopg2://{DATABASE_USER}@{HOST}:{self.postgres_port}/{DATABASE}"

    @property
    def reader_uri(self) -> str:
        return f"postgresql+psycopg2://{READER}@{HOST}:{self.postgres_port}/{DATABASE}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.server_port}"

    @property
    def password_file(self) -> Path:
        return Path(self.folder) / PASSWORD_FILE

    @property
    def pgdata(self) -> Path:
        return Path(self.folder) / "postgres"

    @property
    def artifacts(self) -> Path:
        return Path(self.folder) / "artifacts"

    @property
    def logs(self) -> Path:
        return Path(self.folder) / "logs"


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: closed connections do not hold the port
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def postgres_binaries() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: on PATH, else the newest in the distribution's usual places."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = [Path(found).parent for pattern in POSTGRES_BINARY_DIRS for found in glob.glob(f"{pattern}/initdb")]
    return max(candidates, key=_version_key, default=None)


def _version_key(folder: Path) -> tuple[int, ...]:
    digits = "".join(c if c.isdigit() else " " for c in str(folder)).split()
    return tuple(int(d) for d in digits)


def _as_postgres_user(command: list[str]) -> list[str]:
    """The command as PostgreSQL wants to be run: as the current user, or as `postgres` when that is root."""
    if os.geteuid() != 0:
        return command
    if not shutil.which("runuser"):
        raise BtsError("PostgreSQL refuses to run as root and runuser is missing: run `make team-up` as a regular user")
    return ["runuser", "-u", POSTGRES_SYSTEM_USER, "--", *command]


def _give_to_postgres_user(*paths: Path) -> None:
    """As root, hand the folders PostgreSQL writes to its system user, and check that user can reach them."""
    if os.geteuid() != 0:
        return
    try:
        for path in paths:
            shutil.chown(path, POSTGRES_SYSTEM_USER)
    except LookupError:
        raise BtsError(f"PostgreSQL refuses to run as root and there is no '{POSTGRES_SYSTEM_USER}' user to run it as") from None
    check = subprocess.run(_as_postgres_user(["test", "-w", str(paths[0])]), capture_output=True)
    if check.returncode != 0:
        raise BtsError(
            f"{paths[0]}: user '{POSTGRES_SYSTEM_USER}' cannot reach it (a parent folder is not searchable by others); "
            "use --dir with a folder it can reach"
        )


def _run(command: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        raise BtsError(f"{what} failed: {output[-1] if output else f'exit code {result.returncode}'}")
    return result


def _write_private(path: Path, text: str) -> None:
    """text as the whole of a file only its owner may read, never readable by others even for a moment."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def passwords(team: Team) -> dict[str, str]:
    """{role: password} of the team's roles, from its password file (libpq's format; blank and # lines skipped); made
    (random, owner-only) when there is none. A file that cannot be read or lacks a role is one line saying what to do."""
    initialised = (team.pgdata / "PG_VERSION").exists()
    hba = team.pgdata / "pg_hba.conf"
    hba_lines = hba.read_text().splitlines() if initialised else []
    rules = [line.split() for line in hba_lines if line.strip() and not line.lstrip().startswith("#")]
    before_passwords = any(rule[-1] == "trust" for rule in rules)  # made by an earlier version, which trusted loopback
    if not team.password_file.exists() and (not initialised or before_passwords):
        _write_private(team.password_file, "".join(f"{HOST}:*:*:{role}:{secrets.token_urlsafe(24)}\n" for role in (DATABASE_USER, READER)))
    if initialised and not before_passwords:
        remedy = (
            f"PostgreSQL in {team.pgdata} was given the passwords it held: restore it from a backup, or `make team-down` and "
            f"remove {team.folder} to start over (its runs and artifacts go with it)"
        )
    else:
        remedy = "remove it: `make team-up` makes new passwords"
    try:
        lines = team.password_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BtsError(f"{team.password_file}: cannot read it ({getattr(exc, 'strerror', None) or 'not UTF-8 text'}); {remedy}") from None
    found = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":", 4)
        if len(fields) != 5:
            raise BtsError(f"{team.password_file}: line {number} is not host:port:database:role:password; {remedy}")
        if fields[0] == HOST:
            found[fields[3]] = fields[4]
    missing = {DATABASE_USER, READER} - found.keys()
    if missing:
        raise BtsError(f"{team.password_file}: no password for {', '.join(sorted(missing))}; {remedy}")
    return found


def start_postgres(team: Team, binaries: Path) -> None:
    """initdb (first time only), then start the server on loopback at the team's port, no Unix socket, every role by
    password; a data folder made before passwords were asked is moved to them as it starts."""
    team.logs.mkdir(parents=True, exist_ok=True)
    password_file = team.logs / ".initdb-password"  # initdb reads the superuser's password from a file; gone at once
    password_file.unlink(missing_ok=True)  # or left by an initdb killed half-way
    secret = passwords(team)
    if not (team.pgdata / "PG_VERSION").exists():
        team.pgdata.mkdir(parents=True, exist_ok=True)
        _give_to_postgres_user(team.pgdata, team.logs)
        _write_private(password_file, secret[DATABASE_USER] + "\n")
        _give_to_postgres_user(password_file)
        try:
            initdb = [str(binaries / "initdb"), "-D", str(team.pgdata), "-A", "scram-sha-256", "-U", DATABASE_USER, "-E", "UTF8"]
            _run(_as_postgres_user([*initdb, f"--pwfile={password_file}"]), "initdb")
        finally:
            password_file.unlink(missing_ok=True)
    _give_to_postgres_user(team.pgdata, team.logs)
    options = f"-p {team.postgres_port} -c listen_addresses={HOST} -c unix_socket_directories=''"
    log = team.logs / "postgres.log"
    command = [str(binaries / "pg_ctl"), "-D", str(team.pgdata), "-o", options, "-l", str(log), "-w", "-t", "60", "start"]
    result = subprocess.run(_as_postgres_user(command), capture_output=True, text=True)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise BtsError(f"PostgreSQL did not start on {HOST}:{team.postgres_port}: {(tail or [result.stderr.strip()])[0]} (log {log})")
    _create_database(team, secret)
    hba = team.pgdata / "pg_hba.conf"
    if hba.read_text() != HBA:  # initdb's own has local sockets and ::1 too; a folder made before passwords has trust
        hba.write_text(HBA)
        _give_to_postgres_user(hba)
        _run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(team.pgdata), "reload"]), "pg_ctl reload")


def _create_database(team: Team, secret: dict[str, str]) -> None:
    """The database MLflow creates its tables in, and a role that may read them (and those later migrations add), each
    role with its password. No statement that carries a password is ever logged, failed or not."""
    import psycopg2

    values = {"postgres_password": secret[DATABASE_USER], "reader_password": secret[READER]}
    for database, statements in [
        ("postgres", ["SET log_statement = 'none'", "SET log_min_error_statement = 'panic'",
                      f"ALTER ROLE {DATABASE_USER} PASSWORD %(postgres_password)s", f"CREATE DATABASE {DATABASE}",
                      f"CREATE ROLE {READER} LOGIN", f"ALTER ROLE {READER} PASSWORD %(reader_password)s"]),
        (DATABASE, [f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}",
                    f"ALTER DEFAULT PRIVILEGES FOR ROLE {DATABASE_USER} IN SCHEMA public GRANT SELECT ON TABLES TO {READER}"]),
    ]:  # fmt: skip
        try:
            connection = psycopg2.connect(
                host=HOST, port=team.postgres_port, user=DATABASE_USER, password=secret[DATABASE_USER], dbname=database, connect_timeout=10
            )
        except psycopg2.OperationalError as exc:  # a password file that no longer holds the passwords PostgreSQL was given
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BtsError(f"PostgreSQL on {HOST}:{team.postgres_port} refused the passwords of {team.password_file}: {first}") from None
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                for statement in statements:
                    with contextlib.suppress(psycopg2.errors.DuplicateDatabase, psycopg2.errors.DuplicateObject):
                        cursor.execute(statement, values)  # or made by an earlier `up`
        finally:
            connection.close()


def postgres_running(team: Team, binaries: Path | None) -> bool:
    if binaries is None or not (team.pgdata / "PG_VERSION").exists():
        return False
    result = subprocess.run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(team.pgdata), "status"]), capture_output=True)
    return result.returncode == 0


def stop_postgres(team: Team, binaries: Path | None) -> None:
    if postgres_running(team, binaries):
        _run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(team.pgdata), "-m", "fast", "-w", "stop"]), "pg_ctl stop")


def start_server(team: Team) -> None:
    """`mlflow server` on the team's database, proxying artifacts to its folder; returns once it answers API calls."""
    team.artifacts.mkdir(parents=True, exist_ok=True)
    team.logs.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", team.backend_uri,
        "--serve-artifacts", "--artifacts-destination", str(team.artifacts.resolve()),
        "--host", HOST, "--port", str(team.server_port), "--workers", str(SERVER_WORKERS),
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    environment["PGPASSFILE"] = str(team.password_file.resolve())  # the database's password, out of the command line
    # MLflow's job runner (GenAI evaluation jobs, trace roll-ups: nothing this project uses) would start eight more
    # processes, each importing MLflow, beside every server.
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(team.logs / "mlflow-server.log", "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    team.server_pid = process.pid
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise BtsError(f"mlflow server exited with code {process.returncode} (log {team.logs / 'mlflow-server.log'})")
        if server_answers(team.tracking_uri):
            return
        if time.monotonic() > deadline:
            stop_server(team)
            raise BtsError(f"mlflow server did not answer on {team.tracking_uri} within {START_TIMEOUT_SECONDS} s")
        time.sleep(0.5)


def server_answers(uri: str, timeout: float = 2.0) -> bool:
    """True when the server answers an API call that reads the database."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _server_process(team: Team):
    """The psutil process of this team's mlflow server, if it still runs (a recycled pid is not ours)."""
    import psutil

    if not team.server_pid:
        return None
    try:
        process = psutil.Process(team.server_pid)
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return process if "mlflow" in command and f"--port {team.server_port}" in command else None


def stop_server(team: Team) -> None:
    """Stop the server and its workers (its own process group), waiting for them to exit."""
    process = _server_process(team)
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while process.is_running() and process.status() != "zombie" and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that ignored SIGTERM
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)
    team.server_pid = None


def load_state(folder: Path) -> Team | None:
    try:
        return Team(**json.loads((folder / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_state(team: Team) -> None:
    (Path(team.folder) / STATE_FILE).write_text(json.dumps(asdict(team), indent=2) + "\n")


def chosen_port(port: int | None, saved: int, what: str) -> int:
    """The port to start a service on: the one asked for (it must be free), else the one used last time when free, else any."""
    if port:
        if not port_is_free(port):
            raise BtsError(f"{what} port {port}: already in use on {HOST}; choose another (or leave it out for a free one)")
        return port
    return saved if saved and port_is_free(saved) else free_port()


def start(folder: Path, postgres_port: int | None = None, server_port: int | None = None) -> Team:
    """Start PostgreSQL and the MLflow server for the folder's data, on the ports asked for (else those used last time when
    free, else free ones); idempotent."""
    for what, port in (("PostgreSQL", postgres_port), ("MLflow server", server_port)):
        if port is not None and not 1024 <= port <= 65535:
            raise BtsError(f"{what} port {port}: use 1024 to 65535")
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    binaries = postgres_binaries()
    if binaries is None:
        raise BtsError("PostgreSQL server binaries (initdb, pg_ctl) not found: `make postgres` installs them (apt-get)")
    team = load_state(folder) or Team(str(folder), 0, 0)
    team.folder = str(folder)
    if postgres_running(team, binaries) and postgres_port and postgres_port != team.postgres_port:
        raise BtsError(f"PostgreSQL already runs on port {team.postgres_port}: `make team-down` first to move it to {postgres_port}")
    if not postgres_running(team, binaries):
        team.postgres_port = chosen_port(postgres_port, team.postgres_port, "PostgreSQL")
        start_postgres(team, binaries)
    running = _server_process(team) is not None and server_answers(team.tracking_uri)
    if running and server_port and server_port != team.server_port:
        raise BtsError(f"the MLflow server already runs on port {team.server_port}: `make team-down` first to move it to {server_port}")
    if not running:
        stop_server(team)
        team.server_port = chosen_port(server_port, team.server_port, "MLflow server")
        save_state(team)  # before the wait: a `down` from another terminal finds what to stop
        start_server(team)
    save_state(team)
    return team


def stop(folder: Path) -> Team | None:
    """Stop the folder's MLflow server, then its PostgreSQL; the data stays."""
    team = load_state(folder.resolve())
    if team is None:
        return None
    stop_server(team)
    stop_postgres(team, postgres_binaries())
    save_state(team)
    return team


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bts.team", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, help=f"folder of the data, artifacts and logs (default: {TEAM_DIR}/ at the repository root)")
    parser.add_argument("--postgres-port", type=int, help="PostgreSQL's port (default: the last one when free, else a free one)")
    parser.add_argument("--server-port", type=int, help="the MLflow server's port (default: the last one when free, else a free one)")
    args = parser.parse_args(argv)
    try:
        if args.dir is None:
            args.dir = find_root() / TEAM_DIR
        if args.action == "up":
            team = start(args.dir, args.postgres_port, args.server_port)
            print(
                f"team: PostgreSQL on {HOST}:{team.postgres_port} (data {team.pgdata}), MLflow server on {team.tracking_uri} "
                f"(artifacts {team.artifacts}); logs in {team.logs}; stop with `make team-down`",
                file=sys.stderr,
            )
            print(f"export MLFLOW_TRACKING_URI={team.tracking_uri}")
            print(f"export {BULK_READ_DATABASE}={team.reader_uri}")
            print(f"export PGPASSFILE={team.password_file}")
        elif args.action == "down":
            team = stop(args.dir)
            print("team: stopped" if team else f"team: nothing started from {args.dir}", file=sys.stderr)
        else:
            team = load_state(args.dir.resolve())
            if team is None:
                print(f"team: nothing started from {args.dir}")
                return 1
            postgres = "running" if postgres_running(team, postgres_binaries()) else "stopped"
            server = "running" if _server_process(team) and server_answers(team.tracking_uri) else "stopped"
            print(f"PostgreSQL {HOST}:{team.postgres_port} {postgres}; MLflow server {team.tracking_uri} {server}")
            return 0 if postgres == server == "running" else 1
    except BtsError as exc:
        print(f"team: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
