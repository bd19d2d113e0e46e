"""The README and the docs pages followed on a fresh copy of the project, section by section, command by command.

The walks name their sections by page and title (the lists below), in the order a user meets them. Each command
of a walked section runs in bash from the repository's root with its .venv first on PATH, as a user would after
`source .venv/bin/activate`, and what it prints (stdout and stderr, as a terminal shows them) must hold the output
the page shows; tests/integration/readme.py says how commands and outputs are told apart and which tokens match
by shape. The README's Quick start runs `make repro` on a fresh repository. The walkthrough's Real exports, and
its Experiments then MLproject (in the background: the queued grid is the longest part), each go on from a copy
of what Quick start left; Registry (the walkthrough's packaging and registry, and the verification of
docs/reproducibility-and-security.md), Serving (docs/serving-and-monitoring.md: stock MLflow, `bts serve`,
monitoring) and the walkthrough's Lineage go on, one after the other, from another copy: the outputs there
assume the workspace and the store as Quick start left them (one registered version, a lineage `in: branch
main`). The README's other sections are short: the commands they show are the docs pages' own (a test checks it).

Servers (`mlflow models serve`, `bts serve`) start in the background on free ports (the README's ports are
rewritten, in commands and in outputs); a server runs while the commands address its port, and is stopped with
SIGTERM before the first command that does not (the README reads the monitoring log after stopping the server)
and started again by its own command when a later one addresses its port. Server commands on the same port in
one paragraph are alternatives: the commands after them run against each in turn. Outputs the README shows
without the command that prints them are made by a recipe below (a bad export, a bad request), or listed in
NOT_WALKED with the test that covers them."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from bts.params import PARAMS_FILE, load_params
from bts.tracking.tags import BASELINE_REV, EXP_NAME
from tests.integration.conftest import make_project_repo
from tests.integration.readme import (
    Command,
    Commands,
    FileEdit,
    Match,
    Output,
    Paragraph,
    Section,
    closest,
    find_lines,
    find_section,
    sections,
)
from tests.integration.test_mlproject import DELETION_TIMEOUT_SECONDS
from tests.integration.workspace import DATASETS, PROJECT, copy_workspace, lock_outs, store, with_test_venv

pytestmark = pytest.mark.integration

README = PROJECT / "README.md"
DOCS = PROJECT / "docs"
WALKTHROUGH = "docs/walkthrough.md"
SERVING_PAGE = "docs/serving-and-monitoring.md"
SECURITY_PAGE = "docs/reproducibility-and-security.md"
Place = tuple[str, str]  # (page, section title): where a walk finds a section
QUICK_START: list[Place] = [("README.md", "Quick start")]
REAL_EXPORTS_WALK: list[Place] = [(WALKTHROUGH, "Real exports")]
EXPERIMENTS_WALK: list[Place] = [(WALKTHROUGH, "Experiments"), (WALKTHROUGH, "MLproject")]
REGISTRY_WALK: list[Place] = [(WALKTHROUGH, "Packaging, registry and model card"), (SECURITY_PAGE, "Nothing is loaded unverified")]
SERVING_WALK: list[Place] = [(SERVING_PAGE, "Serving"), (SERVING_PAGE, "Serving with `bts serve`"), (SERVING_PAGE, "Monitoring")]
LINEAGE_WALK: list[Place] = [(WALKTHROUGH, "Lineage and reproduction")]
WALKS = [QUICK_START, REAL_EXPORTS_WALK, EXPERIMENTS_WALK, REGISTRY_WALK, SERVING_WALK, LINEAGE_WALK]
REAL_EXPORTS = PROJECT.parent / "shared" / "data" / "bts"  # CI has it: the test fails without it, it does not skip
COMMAND_TIMEOUT_SECONDS = 1800
SERVER_START_SECONDS = 180
SERVER_STOP_SECONDS = 60
SERVER_OUTPUT_SECONDS = 10  # a server's lines reach its reader thread after it answers: how long a check waits for them
POLL_SECONDS = 10  # each `dvc queue status` costs a few CPU seconds the queue's workers would use
POLL_TIMEOUT_SECONDS = 1800

RECORD = "BTS_README_RECORD"  # a file to append every walked command and its output to (tests/integration/readme.py)
SERVERS = ("mlflow models serve", "mlflow server", "mlflow ui", "bts serve")
# Commands that reach a server on a default port unless told otherwise: (README port, the option that says so)
DEFAULT_PORTS = {"bts serve": (5002, "--port {}"), "bts replay": (5002, "--url http://127.0.0.1:{}"), "mlflow ui": (5000, "--port {}")}
PORT_IN_TEXT = re.compile(r"((?:localhost|127\.0\.0\.1):|(?:-p|--port)[ =])(\d{4,5})\b")
# Commands the walk does not run, with why (each must still be on a page, or this list is stale).
NOT_RUN = {
    "make test": "the whole suite, this module included; CI runs it",
    "make test-fast": "the unit tests: make test runs them",
    "bts promote 3 --to champion --evaluate-on data/processed/features.parquet": "a variant: the walk registers one version",
    'bts promote 2 --to champion --force --reason "field test on station 42"': "a variant: the walk registers one version",
}
# Lines printed as time goes by, that the README leaves out (`bts replay` reports progress every second on stderr).
PROGRESS_LINES = re.compile(r"^replay: \d+/\d+ rows sent$")
# Commands the README says to repeat until done: the regex their output must no longer match.
POLLED = {"dvc queue status": (re.compile(r"\b(Queued|Running)\b"), re.compile(r"\bFailed\b"))}


def record(command: str, output: str) -> None:
    """Append what a command printed to the file RECORD names, if set: what to paste when the README's outputs change."""
    if os.environ.get(RECORD):
        with open(os.environ[RECORD], "a") as handle:
            handle.write(f"$ {command}\n{output}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def words_of(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def starts_with(command: str, prefix: str) -> bool:
    return words_of(command)[: len(prefix.split())] == prefix.split()


def fresh_repo(repo: Path) -> Path:
    """A fresh copy of the project in a new git repository, with a .venv that is the test's (already set up)."""
    return with_test_venv(make_project_repo(repo))


class Server:
    """A server command running in the background, its output collected as it comes."""

    def __init__(self, command: str, shell: str, port: int, repo: Path, env: dict[str, str]) -> None:
        self.command, self.port = command, port
        self.process = subprocess.Popen(
            ["bash", "-c", shell], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"`{command}` did not start on port {port}:\n{self.text()[-3000:]}")
            time.sleep(0.5)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def listening(self) -> bool:
        """True once a process this command started listens on its port (another server answering there is not ours)."""
        try:
            leader = psutil.Process(self.process.pid)
            processes = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return False
        for process in processes:
            try:
                connections = process.net_connections(kind="inet")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in connections):
                return True
        return False

    def ready(self) -> bool:
        if not self.listening():
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def text(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C or a service manager stops it (to the process group: `mlflow models serve` has workers)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=SERVER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"`{self.command}` did not stop within {SERVER_STOP_SECONDS} s of SIGTERM") from None
        self.reader.join(timeout=10)
        assert "Traceback" not in self.text(), f"`{self.command}`:\n{self.text()[-3000:]}"


Entry = tuple[Command, "str | Server"]  # a command and what it printed (a server: what it has printed so far)


class Walk:
    """Following the README in one repository: its ports, servers, and the values the README's varying tokens took."""

    def __init__(self, repo: Path, bindings: dict[str, tuple[str, str]] | None = None) -> None:
        self.repo = repo
        self.bindings = dict(bindings or {})  # README token -> (value here, kind)
        self.ports: dict[int, int] = {}  # README port -> free port here
        self.servers: dict[int, Server] = {}  # README port -> running server
        self.server_commands: dict[int, Command] = {}  # README port -> the command that serves it
        self.walked: dict[str, list[str]] = {}  # section name (`<page>: <title>`) -> problems found
        self.group: tuple[str, list[Entry]] | None = None  # (section, entries) of the last commands run
        self.timings: list[tuple[str, float]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        self.env["PATH"] = f"{repo / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
        self.env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleaved in the order written, as on a terminal

    def fork(self, repo: Path) -> Walk:
        copy_workspace(self.repo, repo)
        return Walk(repo, self.bindings)

    def close(self) -> None:
        for port in list(self.servers):
            self.stop(port)

    # --- commands -------------------------------------------------------------------------------------------------

    def port(self, readme_port: int) -> int:
        if readme_port not in self.ports:
            self.ports[readme_port] = free_port()
        return self.ports[readme_port]

    def addressed(self, shell: str) -> set[int]:
        """The README ports a command talks to: named in it, or its default."""
        ports = {int(m.group(2)) for m in PORT_IN_TEXT.finditer(shell)}
        for prefix, (default, option) in DEFAULT_PORTS.items():
            if starts_with(shell, prefix) and option.split()[0] not in words_of(shell):
                ports.add(default)
        return ports

    def rewrite(self, command: Command) -> str:
        """The command as run here: on this walk's ports, the real exports taken from where CI keeps them."""
        shell = PORT_IN_TEXT.sub(lambda m: f"{m.group(1)}{self.port(int(m.group(2)))}", command.shell)
        for prefix, (default, option) in DEFAULT_PORTS.items():
            if starts_with(shell, prefix) and option.split()[0] not in words_of(shell):
                shell += " " + option.format(self.port(default))
        words = words_of(shell)
        if words[0] == "cp":
            for source in words[1:-1]:
                if not (self.repo / source).exists():
                    assert (REAL_EXPORTS / source).is_file(), (
                        f"`{command.words}`: no {source} in {REAL_EXPORTS} (CI has the real exports there)"
                    )
                    shell = shell.replace(source, shlex.quote(str(REAL_EXPORTS / source)), 1)
        return shell

    def shell(self, shell: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["bash", "-c", shell],
            cwd=self.repo,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"`{shell}` exited {result.returncode} in {self.repo}:\n{result.stdout[-6000:]}")
        return result

    def run(self, command: Command) -> str | Server:
        shell = self.rewrite(command)
        started = time.monotonic()
        addressed = self.addressed(command.shell)
        if any(starts_with(shell, prefix) for prefix in SERVERS):
            (readme_port,) = addressed
            self.stop(readme_port)
            self.server_commands[readme_port] = command
            result: str | Server = self.start(readme_port)
        else:
            for port in [p for p in self.servers if p not in addressed]:
                self.stop(port)
            for port in addressed:
                if port not in self.servers and port in self.server_commands:
                    self.start(port)
            completed = self.shell(shell, check=not command.fails)
            assert completed.returncode != 0 or not command.fails, f"`{command.words}` went through:\n{completed.stdout[-3000:]}"
            result = completed.stdout
            if command.words in POLLED:
                until_not, failed = POLLED[command.words]
                deadline = time.monotonic() + POLL_TIMEOUT_SECONDS
                while until_not.search(result):
                    assert time.monotonic() < deadline, f"`{command.words}` after {POLL_TIMEOUT_SECONDS} s:\n{result}"
                    time.sleep(POLL_SECONDS)
                    result = self.shell(shell).stdout
                assert not failed.search(result), f"`{command.words}`:\n{result}"
        self.timings.append((command.words[:70], time.monotonic() - started))
        if isinstance(result, str):
            record(command.words, result)
        return result

    def start(self, readme_port: int) -> Server:
        command = self.server_commands[readme_port]
        self.servers[readme_port] = Server(command.words, self.rewrite(command), self.port(readme_port), self.repo, self.env)
        return self.servers[readme_port]

    def stop(self, readme_port: int) -> None:
        server = self.servers.pop(readme_port, None)
        if server:
            server.stop()
            record(server.command, server.text())

    # --- sections -------------------------------------------------------------------------------------------------

    def section(self, section: Section) -> list[str]:
        """Walk a section once: every command run, every output it shows checked. Returns the mismatches."""
        if section.name in self.walked:
            return self.walked[section.name]
        problems = self.walked[section.name] = []
        for block in section.blocks:
            self.block(section.name, block, problems)
        return problems

    def block(self, title: str, paragraphs: list[Paragraph], problems: list[str]) -> None:
        i = 0
        while i < len(paragraphs):
            paragraph = paragraphs[i]
            if isinstance(paragraph, FileEdit):
                self.edit(paragraph)
                i += 1
                continue
            if isinstance(paragraph, Output):  # a block of output alone: a recipe makes it, or the last commands did
                outputs = [p.lines for p in paragraphs[i:] if isinstance(p, Output)]
                if any(re.search(pattern, paragraph.lines[0]) for pattern in NOT_WALKED):
                    return
                recipe = next((r for pattern, r in RECIPES if re.search(pattern, paragraph.lines[0])), None)
                if recipe:
                    entries = [(Command(f"(recipe {recipe.__name__})"), recipe(self, paragraph.lines))]
                elif self.group and self.group[0] == title:
                    entries = self.group[1]
                else:
                    problems.append(
                        f"{title}: no command of this section prints this, and no recipe makes it:\n" + "\n".join(paragraph.lines)
                    )
                    return
                self.check(title, outputs, entries, problems)
                return
            commands: list[Command] = []
            while i < len(paragraphs) and isinstance(paragraphs[i], Commands):
                commands += paragraphs[i].commands
                i += 1
            outputs = []
            while i < len(paragraphs) and isinstance(paragraphs[i], Output):
                outputs.append(paragraphs[i].lines)
                i += 1
            variants = self.variants(commands)
            for variant in variants:
                entries = []
                for command in variant:
                    if command.words in NOT_RUN:
                        continue
                    result = self.run(command)
                    entries.append((command, result))
                    if command.output:
                        self.check(title, [command.output], [(command, result)], problems)
                self.check(title, outputs, entries, problems)
                self.group = (title, entries)
                if len(variants) > 1:  # the next alternative takes the port
                    for port, server in list(self.servers.items()):
                        if any(server is result for _, result in entries):
                            self.stop(port)

    def variants(self, commands: list[Command]) -> list[list[Command]]:
        """Server commands on the same port are alternatives: one list of commands per alternative."""
        by_port: dict[int, list[Command]] = {}
        for command in commands:
            if any(starts_with(command.shell, prefix) for prefix in SERVERS):
                for port in self.addressed(command.shell):
                    by_port.setdefault(port, []).append(command)
        alternatives = [group for group in by_port.values() if len(group) > 1]
        assert len(alternatives) <= 1, f"alternatives on several ports at once: {alternatives}"
        if not alternatives:
            return [commands]
        return [[c for c in commands if c not in alternatives[0] or c is chosen] for chosen in alternatives[0]]

    def edit(self, edit: FileEdit) -> None:
        """Set the keys a `# <file>` paragraph shows, leaving the rest of the file as it is."""

        def merge(into: dict, values: dict) -> None:
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(into.get(key), dict):
                    merge(into[key], value)
                else:
                    into[key] = value

        path = self.repo / edit.path
        content = yaml.safe_load(path.read_text())
        merge(content, yaml.safe_load(edit.text))
        path.write_text(yaml.safe_dump(content, sort_keys=False))

    def check(self, title: str, outputs: list[list[str]], entries: list[Entry], problems: list[str]) -> None:
        """Each expected paragraph, in order, as consecutive lines of what the commands printed together; a server's
        lines may still be on their way (read by a thread), so with a server among the entries a miss is checked again
        until SERVER_OUTPUT_SECONDS have passed."""
        deadline = time.monotonic() + SERVER_OUTPUT_SECONDS
        while True:
            missed: list[str] = []
            self._check_once(title, outputs, entries, missed)
            if not missed or not any(isinstance(result, Server) for _, result in entries) or time.monotonic() > deadline:
                problems += missed
                return
            time.sleep(0.2)

    def _check_once(self, title: str, outputs: list[list[str]], entries: list[Entry], problems: list[str]) -> None:
        actual: list[str] = []
        for _, result in entries:
            text = result.text() if isinstance(result, Server) else result
            actual += [line.rstrip() for line in text.splitlines() if not PROGRESS_LINES.match(line)]
        position = 0
        for expected in outputs:
            expected = [
                PORT_IN_TEXT.sub(lambda m: m.group(1) + str(self.ports.get(int(m.group(2)), m.group(2))), line) for line in expected
            ]
            found = find_lines(expected, actual, position, self.bindings)
            if isinstance(found, str):
                commands = "; ".join(f"`{c.words[:80]}`" for c, _ in entries)
                nearest = "\n".join(closest(expected, actual, self.bindings))
                problems.append(f"{title}: the output of {commands}: {found}; nearest (- page, + printed):\n{nearest}")
                continue
            self.bindings.update(found.bound)
            position = found.end


# --- recipes: what a user does to see an output the README shows without its command -------------------------------


def bad_export(walk: Walk, lines: list[str]) -> str:
    """A file with the wrong delimiter listed in data.sources: `dvc repro` stops at ingest, and nothing is written."""
    path, delimiter = re.match(r"ingest: error: (\S+): wrong delimiter '(.)' in header", lines[0]).groups()
    header = delimiter.join(["id", "value", "station_id", "parameter_id", "reading_time"])
    (walk.repo / path).write_text(f"{header}\n1{delimiter}1.0{delimiter}1161114004{delimiter}122{delimiter}2017-04-18 00:00:00\n")
    sources = yaml.safe_load((walk.repo / "params.yaml").read_text())["data"]["sources"]
    walk.edit(FileEdit("params.yaml", yaml.safe_dump({"data": {"sources": [*sources, path]}})))
    tracked = ["dvc.lock", *(f"metadata/datasets/raw{suffix}" for suffix in (".json", ".md", "_failures.json"))]
    kept = {name: (walk.repo / name).read_bytes() for name in [*tracked, "data/interim/raw.parquet"]}
    result = walk.shell("dvc repro", check=False)
    assert result.returncode != 0, f"dvc repro went through with {path}:\n{result.stdout[-3000:]}"
    assert {name: (walk.repo / name).read_bytes() for name in tracked} == {name: kept[name] for name in tracked}, "ingest wrote"
    walk.shell("dvc checkout")  # "the cached ones come back with `dvc checkout`"
    assert (walk.repo / "data/interim/raw.parquet").read_bytes() == kept["data/interim/raw.parquet"]
    return result.stdout


def bad_request(walk: Walk, lines: list[str]) -> str:
    """A number sent as a string, to a `bts serve` of its own (no monitoring log: the README's log holds no failure)."""
    column, row = re.search(r"column '(\w+)': expected a number, got a string in row (\d+)", lines[0]).groups()
    command = next(c for p, c in walk.server_commands.items() if starts_with(c.shell, "bts serve"))
    port = free_port()
    server = Server(command.words, f"{command.shell} --port {port} --no-log", port, walk.repo, walk.env)
    try:
        example = json.loads((walk.repo / "models/package/serving_input_example.json").read_text())["dataframe_split"]
        example["data"][int(row)][example["columns"].index(column)] = str(example["data"][int(row)][example["columns"].index(column)])
        body = json.dumps({"dataframe_split": example}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=60)
            raise AssertionError(f"a string in column {column} was scored")
        except urllib.error.HTTPError as error:
            assert 400 <= error.code < 500, error.code
            return error.read().decode()
    finally:
        server.stop()


RECIPES: list[tuple[str, Callable[[Walk, list[str]], str]]] = [
    (r"^ingest: error: \S+: wrong delimiter", bad_export),
    (r'^\{"error_code":"WRONG_TYPE"', bad_request),
]
# Outputs the README shows as examples of what no command of the walk prints, with where they are tested.
NOT_WALKED = {
    r"^evaluate: error: models/model\.joblib: md5 ": "tests/integration/test_lineage.py tampers with the cache and a package",
    r"^bts: error: /tmp/alarms\.csv: wrong delimiter": "tests/integration/test_batch.py gives bts batch-predict a bad file",
}


# --- the walk ---------------------------------------------------------------------------------------------------------


def page_files() -> list[Path]:
    """The pages the walk reads: the README and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.fixture(scope="module")
def pages() -> dict[str, list[Section]]:
    """Each page's sections, by its path relative to the project's root."""
    found = {}
    for path in page_files():
        name = path.relative_to(PROJECT).as_posix()
        found[name] = sections(path.read_text(), name)
    return found


def place_section(pages: dict[str, list[Section]], place: Place) -> Section:
    page, title = place
    assert page in pages, f"no page {page} (pages: {sorted(pages)})"
    return find_section(pages[page], title, page)


def walk_sections(walk: Walk, pages: dict[str, list[Section]], *places: Place) -> list[str]:
    problems = []
    for place in places:
        started = time.monotonic()
        section = place_section(pages, place)
        problems += walk.section(section)
        print(f"{section.name}: {time.monotonic() - started:.0f} s")
    return problems


def walked(walk: Walk, pages: dict[str, list[Section]], places: list[Place]) -> list[str]:
    """The problems the walk found in these sections (each must have been walked)."""
    return [problem for place in places for problem in walk.walked[place_section(pages, place).name]]


def print_timings(walk: Walk) -> None:
    """Where the time goes (shown with `pytest -s`): the module should stay within a few minutes on 2 cores."""
    for command, seconds in walk.timings:
        print(f"{seconds:6.1f} s  {walk.repo.name}: {command}")


def report(problems: list[str]) -> str:
    return "\n\n".join(problems)


@dataclass
class Experiments:
    walk: Walk
    done: Future  # the walk of Experiments and MLproject, running in the background


@pytest.fixture(scope="module")
def after_quick_start(pipeline_build: Path, tmp_path_factory: pytest.TempPathFactory, pages: dict[str, list[Section]]) -> Iterator[Walk]:
    """Quick start on a copy of the session's build from nothing (`make repro` then has nothing to run and prints its
    summary; CI runs it from nothing on a clean clone); what it changed is committed, so later sections have a commit."""
    repo = tmp_path_factory.mktemp("readme") / "quick-start"
    copy_workspace(pipeline_build, repo)
    walk = Walk(with_test_venv(repo))
    walk_sections(walk, pages, *QUICK_START)
    changed = walk.shell("git status --porcelain").stdout
    if changed:
        warnings.warn(f"make repro changed tracked files (the project's dvc.lock is not current), committed:\n{changed}", stacklevel=1)
        walk.shell("git add -A && git commit -q -m 'pipeline results'")
    yield walk
    walk.close()
    print_timings(walk)


@pytest.fixture(scope="module")
def experiments(
    after_quick_start: Walk, tmp_path_factory: pytest.TempPathFactory, pages: dict[str, list[Section]]
) -> Iterator[Experiments]:
    """Experiments then MLproject on their own copy, in the background while the other sections are walked.

    They take the longest (the queued grid), and mostly in DVC's queue workers: the other walks use the time.
    """
    walk = after_quick_start.fork(tmp_path_factory.mktemp("readme") / "experiments")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield Experiments(walk, pool.submit(walk_sections, walk, pages, *EXPERIMENTS_WALK))
    walk.close()
    print_timings(walk)


@pytest.fixture(scope="module")
def registry(after_quick_start: Walk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    walk = after_quick_start.fork(tmp_path_factory.mktemp("readme") / "registry")
    yield walk
    walk.close()
    print_timings(walk)


def shown_commands(all_sections: list[Section]) -> list[Command]:
    return [c for s in all_sections for b in s.blocks for p in b if isinstance(p, Commands) for c in p.commands]


def test_readme_lists_what_the_walk_leaves_out(pages: dict[str, list[Section]]) -> None:
    everywhere = [s for page in pages.values() for s in page]
    shown = {c.words for c in shown_commands(everywhere)}
    assert set(NOT_RUN) <= shown, f"no longer on any page, remove from NOT_RUN: {set(NOT_RUN) - shown}"
    outputs = [p.lines[0] for s in everywhere for b in s.blocks for p in b if isinstance(p, Output)]
    for pattern in NOT_WALKED:
        assert any(re.search(pattern, line) for line in outputs), f"no longer on any page, remove from NOT_WALKED: {pattern}"


def test_walked_sections_are_on_their_pages(pages: dict[str, list[Section]]) -> None:
    """Each walked section is found, once, on its page, and shows commands or outputs: a renamed heading fails here, fast."""
    for place in (place for walk in WALKS for place in walk):
        assert place_section(pages, place).blocks, f"{place}: no code block to walk"


def test_readme_commands_are_the_docs_own(pages: dict[str, list[Section]]) -> None:
    """The README's short sections show commands of the docs pages, where the walk checks them (or says why not)."""
    walked_here = {title for page, title in (place for walk in WALKS for place in walk) if page == "README.md"}
    readme = [s for s in pages["README.md"] if not any(s.title.startswith(title) for title in walked_here)]
    docs = {c.words for page, found in pages.items() if page != "README.md" for c in shown_commands(found)}
    missing = [c.words for c in shown_commands(readme) if c.words not in docs]
    assert not missing, f"README.md shows commands no docs page shows: {missing}"


def test_commands_and_outputs_are_told_apart() -> None:
    text = "\n".join(
        [
            "## Demo",
            "",
            "    bts serve models/package      # or models:/m/1",
            "",
            "    bts serve: models/package ... listening on http://127.0.0.1:5002",
            "",
            '    curl -s localhost:5002/invocations -d \'{"a":',
            "      [1]}' # the user's comment",
            "    mlflow run . -P alpha=0.5",
            "    mlproject: error: -P alpha=0.5: no key",
        ]
    )
    (section,) = sections(text, "docs/demo.md")
    assert section.name == "docs/demo.md: Demo"
    (block,) = section.blocks
    serve, started, calls = block
    assert [c.shell for c in serve.commands] == ["bts serve models/package"]
    assert started.lines == ["bts serve: models/package ... listening on http://127.0.0.1:5002"]
    curl, mlflow_run = calls.commands
    assert curl.shell == "curl -s localhost:5002/invocations -d '{\"a\":\n  [1]}'" and not curl.fails
    assert mlflow_run.fails and mlflow_run.output == ["mlproject: error: -P alpha=0.5: no key"]


def test_varying_tokens_match_by_shape_and_name_one_value() -> None:
    readme = [
        "registered: version 1 from run 3e470eba70dc442a8d110d66afa6b134; took 0.7226",
        "  again run 3e470eba70dc442a8d110d66afa6b134",
    ]
    printed = ["noise", "registered: version 1 from run 0123456789abcdef0123456789abcdef; took 0.7226"]
    bindings: dict[str, tuple[str, str]] = {}
    assert find_lines(readme, [*printed, "  again run 0123456789abcdef0123456789abcdef"], 0, bindings).end == 3
    assert find_lines(readme, [*printed, "  again run ffffffffffffffffffffffffffffffff"], 0, bindings) == "not found"
    assert find_lines(["took 0.7226"], ["took 0.7227"], 0, bindings) == "not found"  # numbers are exact
    bound = find_lines(readme[:1], printed, 0, bindings).bound
    other = ["registered: version 1 from run 1111111111111111111111111111111f; took 0.7226"]
    found = find_lines(other, printed, 0, {**bindings, **bound})
    assert isinstance(found, str) and "two different run ids" in found
    assert find_lines(["a", "...", "c"], ["a", "b", "b", "c"], 0, {}).end == 4


def test_summary_matches_the_package_md5_by_shape_and_the_data_md5s_exactly(pages: dict[str, list[Section]]) -> None:
    """An edit of the library changes the package's md5, not the committed data's: the README's summary says which is which."""
    summary = next(
        p.lines
        for b in place_section(pages, QUICK_START[0]).blocks
        for p in b
        if isinstance(p, Output) and p.lines[0] == "Pipeline outputs:"
    )
    package = next(line for line in summary if line.startswith("Package: "))
    shown = re.search(r"md5 ([0-9a-f]{32}\.dir)", package).group(1)
    assert isinstance(find_lines(summary, [line.replace(shown, "f" * 32 + ".dir") for line in summary], 0, {}), Match)
    raw = next(line for line in summary if line.lstrip().startswith("raw "))
    data_md5 = re.search(r"md5 ([0-9a-f]{12}) ", raw).group(1)
    assert find_lines(summary, [line.replace(data_md5, "0" * 12) for line in summary], 0, {}) == "not found"


def test_quick_start(after_quick_start: Walk, pages: dict[str, list[Section]], experiments: Experiments) -> None:
    problems = walked(after_quick_start, pages, QUICK_START)  # and the Experiments walk starts
    assert not problems, report(problems)


def test_real_exports(after_quick_start: Walk, pages: dict[str, list[Section]], tmp_path: Path) -> None:
    assert REAL_EXPORTS.is_dir(), f"{REAL_EXPORTS} is missing: the real BTS exports CI runs on"
    walk = after_quick_start.fork(tmp_path / "real-exports")
    try:
        problems = walk_sections(walk, pages, *REAL_EXPORTS_WALK)
    finally:
        walk.close()
        print_timings(walk)
    assert not problems, report(problems)
    tracked = walk.shell("git ls-files data/external").stdout.split()
    exports = [p for p in (walk.repo / "data/external").glob("*.csv") if f"data/external/{p.name}.dvc" in tracked]
    assert exports, f"no export tracked with DVC in data/external: {tracked}"
    stations = {int(line.split(",")[2]) for path in exports for line in path.read_text().splitlines()[1:2]}
    for name in ("raw", "clean", "features"):  # "The station then shows up in metadata/datasets/{raw,clean,features}.json"
        document = json.loads((walk.repo / f"metadata/datasets/{name}.json").read_text())
        assert stations <= set(document["stations"]), f"{name}.json: {document['stations']}"
    # "... and is scored on its own valid and test rows": its only day is the earliest of the data, yet not all train
    metrics = json.loads((walk.repo / "metrics/metrics.json").read_text())
    for split in ("valid", "test"):
        scored = {int(station): scores["rows"] for station, scores in metrics[f"{split}_by_station"].items()}
        assert all(scored.get(station, 0) > 0 for station in stations), f"{split}_by_station: {scored}"
    walk.shell("bts register")
    (card,) = (walk.repo / "models/cards").glob("*.json")
    listed = {row["station_id"]: row for row in json.loads(card.read_text())["stations_scored"]}
    assert all(listed[station]["test_rows"] > 0 and listed[station]["valid_rows"] > 0 for station in stations), listed


def test_registry(registry: Walk, pages: dict[str, list[Section]]) -> None:
    problems = walk_sections(registry, pages, *REGISTRY_WALK)
    assert not problems, report(problems)


def test_serving(registry: Walk, pages: dict[str, list[Section]]) -> None:
    walk_sections(registry, pages, *REGISTRY_WALK)  # as a user goes (each section is walked once)
    problems = walk_sections(registry, pages, *SERVING_WALK)
    registry.close()
    assert not problems, report(problems)


def test_lineage(registry: Walk, pages: dict[str, list[Section]]) -> None:
    walk_sections(registry, pages, *REGISTRY_WALK, *SERVING_WALK)
    registry.close()
    problems = walk_sections(registry, pages, *LINEAGE_WALK)
    assert not problems, report(problems)


def test_experiments(experiments: Experiments, pages: dict[str, list[Section]]) -> None:
    experiments.done.result()
    problems = walked(experiments.walk, pages, EXPERIMENTS_WALK[:1])
    assert not problems, report(problems)


def test_the_queued_grid_lands_every_run_in_the_main_store_traced_to_its_data_and_registers_nothing(experiments: Experiments) -> None:
    """Beyond the outputs the walkthrough shows: each run of its queued grid, run in a copy under .dvc/tmp, is in the
    repository's one store with its DVC experiment, its data md5s and its evaluation; `bts runs check` then reports a
    run whose experiment ref is gone, with the command that recreates it."""
    experiments.done.result()
    repo = experiments.walk.repo
    client = store(repo)
    experiment = load_params(repo / PARAMS_FILE).train.experiment
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    grid = [r for r in runs if r.data.params.get("train.alpha") in ("0.001", "0.1")]  # the walkthrough's -S values
    assert {(r.data.params["train.alpha"], r.data.params["train.l1_ratio"]) for r in grid} == {
        (alpha, l1_ratio) for alpha in ("0.001", "0.1") for l1_ratio in ("0.2", "0.8")
    }
    names = set(experiments.walk.shell("dvc exp list --name-only").stdout.split())
    assert {r.data.tags[EXP_NAME] for r in grid} <= names and len(grid) == 4
    md5s = lock_outs(repo / "dvc.lock")
    head = experiments.walk.shell("git rev-parse HEAD").stdout.strip()
    for logged in grid:
        for name, path in DATASETS.items():
            assert logged.data.tags[f"data.{name}_md5"] == md5s[path]  # the model param varied, the data did not
        assert "test.h1.rmse" in logged.data.metrics  # evaluate logged into the same run
        assert logged.data.tags[BASELINE_REV] == head
    assert not client.search_registered_models()  # experiments never touch the registry

    removed = grid[0].data.tags[EXP_NAME]
    experiments.walk.shell(f"dvc exp remove {removed}")
    check = experiments.walk.shell("bts runs check", check=False)
    assert check.returncode == 1, check.stdout
    assert f"{removed}  run " in check.stdout and "dvc exp run -S train.alpha=" in check.stdout, check.stdout


def test_mlproject(experiments: Experiments, pages: dict[str, list[Section]]) -> None:
    """The section's outputs; beyond them, the train entry point's run (`-e train -P train.model=ridge`) is the
    experiment's one run named after its DVC experiment, with each param once and its data md5s, and every run
    `mlflow run` opened itself (the ridge run's launcher, the up-to-date main's, the misnamed -P's) is deleted."""
    experiments.done.result()
    problems = walked(experiments.walk, pages, EXPERIMENTS_WALK[1:])
    assert not problems, report(problems)
    repo = experiments.walk.repo
    client = store(repo)
    experiment = client.get_experiment_by_name(load_params(repo / PARAMS_FILE).train.experiment)
    (trained,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.project.entryPoint` = 'train'")
    assert trained.info.status == "FINISHED" and "test.h1.rmse" in trained.data.metrics
    assert trained.info.run_name == trained.data.tags[EXP_NAME]
    assert trained.data.tags[EXP_NAME] in experiments.walk.shell("dvc exp list --name-only").stdout.split()
    expected = {key: str(value) for key, value in load_params(repo / PARAMS_FILE).run_params().items()}  # applied to the workspace
    assert trained.data.params == expected and expected["train.model"] == "ridge"
    md5s = lock_outs(repo / "dvc.lock")
    for name, path in DATASETS.items():
        assert trained.data.tags[f"data.{name}_md5"] == md5s[path]
    default = client.get_experiment_by_name("Default")
    deadline = time.monotonic() + DELETION_TIMEOUT_SECONDS  # `mlflow run` deletes its own run from a detached process
    while default and client.search_runs([default.experiment_id]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not default or not client.search_runs([default.experiment_id]), "a run of `mlflow run` was left in Default"
