"""The MLproject's entry points: `dvc repro` and `dvc exp run` under `mlflow run`, logged where they log without it.

`mlflow run` opens a run before it starts an entry point (in the experiment of --experiment-name, else `Default`),
logs the -P params into it, and records its final status after the command exits. The pipeline's runs are opened by
its train stage instead: in params.yaml train.experiment, named after their DVC experiment, each param once. So DVC
gets an environment without `mlflow run`'s run, and that run, which then holds nothing, is deleted once `mlflow run`
has closed it. Not sooner: after the command, `mlflow run` reads its run and sets its final status (MLflow 3.17 does
so even when the status is already final), which fails on a deleted or purged run with a traceback and exit code 1.
The store is the one `mlflow run` uses (it sets MLFLOW_TRACKING_URI for its command): from the repository's root,
the project's mlflow.db.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from bts.errors import BtsError, ConfigError
from bts.params import PARAMS_FILE, flatten, load_params
from bts.project import find_root
from bts.tracking.store import store_lock

COMMANDS = {"main": ["dvc", "repro"], "train": ["dvc", "exp", "run", "--force"]}
CLOSE = "close"  # internal: `python -m bts.mlproject close RUN_ID COMMAND`, run detached by an entry point
# What `mlflow run` hands its command: its run and that run's experiment, neither of them the pipeline's.
RUN_ID_VARIABLE = "MLFLOW_RUN_ID"
EXPERIMENT_ID_VARIABLE = "MLFLOW_EXPERIMENT_ID"
RUN_CONTEXT_VARIABLE = "MLFLOW_RUN_CONTEXT"  # JSON tags MLflow adds to every run a process creates
ENTRY_POINT_TAG = "mlflow.project.entryPoint"  # on the pipeline's new runs, as `mlflow run` tags its own
NOTE_TAG = "mlflow.note.content"
CLOSE_TIMEOUT_SECONDS = 120
CLOSE_POLL_SECONDS = 0.2


def parse_overrides(arguments: Sequence[str], keys: Iterable[str]) -> dict[str, str]:
    """`--train.alpha 0.5` (how `mlflow run` passes `-P train.alpha=0.5`) -> {'train.alpha': '0.5'}; keys are params.yaml's."""
    keys = set(keys)
    if len(arguments) % 2 or not all(option.startswith("--") for option in arguments[::2]):
        raise ConfigError(f"expected -P <params.yaml key>=<value> pairs, got {' '.join(arguments)!r}")
    overrides = {}
    for option, value in zip(arguments[::2], arguments[1::2], strict=True):
        key = option.removeprefix("--")
        if key not in keys:
            near = sorted(known for known in keys if known.endswith(f".{key}"))
            hint = f" (did you mean {' or '.join(f'-P {known}={value}' for known in near)}?)" if near else ""
            raise ConfigError(f"-P {key}={value}: params.yaml has no key '{key}': -P takes params.yaml keys{hint}")
        overrides[key] = value
    return overrides


def dvc_command(entry_point: str, overrides: Mapping[str, str]) -> list[str]:
    """The DVC command of an entry point: `dvc repro`, or `dvc exp run --force -S key=value ...`."""
    if overrides and entry_point == "main":
        raise ConfigError("the main entry point runs `dvc repro` on params.yaml as it is: edit params.yaml, or use -e train -P key=value")
    return [*COMMANDS[entry_point], *(word for key, value in overrides.items() for word in ("-S", f"{key}={value}"))]


def pipeline_environment(environ: Mapping[str, str], entry_point: str) -> dict[str, str]:
    """DVC's environment: without `mlflow run`'s run and experiment, and with the entry point tagged on every new run."""
    environment = {key: value for key, value in environ.items() if key not in (RUN_ID_VARIABLE, EXPERIMENT_ID_VARIABLE)}
    try:
        context = json.loads(environ.get(RUN_CONTEXT_VARIABLE) or "{}")
    except json.JSONDecodeError:
        raise ConfigError(f"{RUN_CONTEXT_VARIABLE} is not JSON: {environ[RUN_CONTEXT_VARIABLE]!r}") from None
    environment[RUN_CONTEXT_VARIABLE] = json.dumps({**context, ENTRY_POINT_TAG: entry_point})
    return environment


def run_pipeline(command: list[str], environment: Mapping[str, str]) -> int:
    """Run DVC in the foreground; its exit code. A SIGTERM (how `mlflow run` cancels) is passed on to it."""
    try:
        process = subprocess.Popen(command, env=dict(environment))
    except FileNotFoundError:
        raise BtsError(f"{command[0]}: not found on PATH (use --env-manager local from the project's environment)") from None
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached DVC too (same process group): let it stop
        return process.wait()


def launch(entry_point: str, arguments: Sequence[str]) -> int:
    """Run the entry point's DVC command; under `mlflow run`, have `mlflow run`'s own run deleted once it is closed."""
    launcher_run_id = os.environ.get(RUN_ID_VARIABLE)
    launched = " ".join(COMMANDS[entry_point])
    try:
        params = load_params(find_root() / PARAMS_FILE)
        overrides = parse_overrides(arguments, flatten(params.model_dump())) if arguments else {}
        command = dvc_command(entry_point, overrides)
        if not launcher_run_id:
            return run_pipeline(command, os.environ)
        returncode = run_pipeline(command, pipeline_environment(os.environ, entry_point))
        # `mlflow run`'s last line names its own run: say where the pipeline's runs are.
        experiment = overrides.get("train.experiment", params.train.experiment)
        launcher = f"run {launcher_run_id} only launched `{launched}`: deleted once closed"
        print(f"mlproject: runs are logged in experiment '{experiment}'; {launcher}")
        return returncode
    finally:
        if launcher_run_id:
            _close_detached(launcher_run_id, launched)


def _close_detached(run_id: str, command: str) -> None:
    """Start `close` in its own session, holding no terminal or pipe of ours: it outlives this process and `mlflow run`."""
    library = str(Path(__file__).resolve().parents[2])
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")]))}
    subprocess.Popen(
        [sys.executable, "-m", "bts.mlproject", CLOSE, run_id, command],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def close_launcher_run(run_id: str, command: str, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
    """Wait until `mlflow run` has recorded the final status of its run, then delete the run; False if it never did.

    The run is noted first, so that one left behind (`mlflow run` killed) says what it was.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    root = find_root()
    note = f"`mlflow run` opened this run to launch `{command}`, whose runs are in params.yaml train.experiment. It holds nothing."
    with store_lock(root):
        client.set_tag(run_id, NOTE_TAG, note)
    deadline = time.monotonic() + timeout
    while client.get_run(run_id).info.status == "RUNNING":
        if time.monotonic() > deadline:
            return False
        time.sleep(CLOSE_POLL_SECONDS)
    with store_lock(root):
        client.delete_run(run_id)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bts.mlproject {main,train} [--<params.yaml key> VALUE ...]`: what MLproject's entry points run."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        if arguments[:1] == [CLOSE] and len(arguments) == 3:
            return 0 if close_launcher_run(arguments[1], arguments[2]) else 1
        if not arguments or arguments[0] not in COMMANDS:
            raise ConfigError(f"usage: python -m bts.mlproject {{{','.join(COMMANDS)}}} [--<params.yaml key> VALUE ...]")
        return launch(arguments[0], arguments[1:])
    except BtsError as exc:
        print(f"mlproject: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
