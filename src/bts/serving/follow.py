"""`bts serve models:/name@alias` follows its alias: a thread looks at the registry every interval and, when the alias
names another version, verifies and loads it, then swaps it in.

Each serving process follows on its own (with --workers, each worker, from its first second: one started in place of
a worker that died begins with the version loaded at start and catches up at once). Requests never wait for a load:
the swap is one assignment (`CurrentModel`). A version that cannot be served (tampered, unloadable, other feature
columns, or other output columns: other horizons than those the log's tables and the metrics' series were made for) is
refused with one line and not tried again until the alias moves; a registry that does not answer is one line until it
answers again; either way the version before goes on serving.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bts.errors import BtsError, first_line
from bts.lifecycle.references import MODEL_URI
from bts.serving.model import CurrentModel, ServedModel, load_verified

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STOP_WAIT_SECONDS = 10  # for a load under way when the server stops; past it the process ends without it
REASON_CHARACTERS = 400  # of a refused version's reason: the names of the files that differ, most often


def followed_alias(ref: str) -> tuple[str, str] | None:
    """(name, alias) when ref is a registry alias, which `bts serve` follows; None for a version or a folder (pinned)."""
    match = MODEL_URI.match(ref)
    return (match.group("name"), match.group("alias")) if match and match.group("alias") else None


def drop_inherited_connections() -> None:
    """In a forked worker: the database connections its parent opened stay the parent's (SQLAlchemy's rule for a fork);
    the worker's MlflowClient opens its own when it first asks the store."""
    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store = sys.modules.get(module)
        for engine in list(getattr(getattr(store, "SqlAlchemyStore", None), "_engine_map", {}).values()):
            engine.dispose(close=False)


class AliasFollower:
    """The thread that keeps `current` on the version `name@alias` names, polling every `interval` seconds."""

    def __init__(
        self,
        client: MlflowClient,
        root: Path,
        current: CurrentModel,
        reference: str,
        interval: float,
        on_swap: Callable[[ServedModel], None],
        worker: int | None = None,
    ) -> None:
        self.client, self.root, self.current, self.reference = client, root, current, reference
        self.name, self.alias = followed_alias(reference) or ("", "")
        self.interval = interval
        self.on_swap = on_swap  # after each swap, with the model now answering (metrics and log follow it)
        self.who = f"bts serve: worker {worker}: " if worker is not None else "bts serve: "
        self.refused: str | None = None  # the version last refused, not tried again while the alias names it
        self.unreachable: str | None = None  # why the last poll failed, said once until a poll succeeds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bts-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_SECONDS)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # the thread must outlive any failure: the version before keeps serving
                self._say(f"@{self.alias}: following failed ({first_line(exc)}); version {self.current.served.version} goes on serving")
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """Look at the alias once; load and swap in the version it names when that is another one and can be served."""
        try:
            named = str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:  # a registry that does not answer, an alias removed: the version before goes on
            reason = first_line(exc)
            if reason != self.unreachable:
                serving = self.current.served.version
                self._say(f"warning: cannot read @{self.alias} from the registry ({reason}); version {serving} goes on serving")
            self.unreachable = reason
            return
        if self.unreachable is not None:
            self._say(f"@{self.alias} read from the registry again")
            self.unreachable = None
        before = self.current.served
        if named == before.version:
            self.refused = None  # the alias came back: a version refused before is tried again if it moves there
            return
        if named == self.refused:
            return
        self.refused = None
        try:
            loaded = load_verified(self.client, f"models:/{self.name}/{named}", self.root, shown_as=self.reference)
            if loaded.feature_columns != before.feature_columns:
                raise BtsError(
                    f"its feature columns ({', '.join(loaded.feature_columns)}) are not those served; restart `bts serve` to serve it"
                )
            if loaded.output_columns != before.output_columns:
                raise BtsError(
                    f"its output columns ({', '.join(loaded.output_columns)}) are not those served; restart `bts serve` to serve it"
                )
        except Exception as exc:  # TAMPERED, not loadable, not servable here: refused once, not every interval
            self.refused = named
            self._say(
                f"@{self.alias} now names version {named}: refused: {first_line(exc, REASON_CHARACTERS)}; version {before.version} "
                f"goes on serving (version {named} is not tried again until @{self.alias} moves)"
            )
            return
        if self._stop.is_set():
            return
        self.current.served = loaded  # the swap: requests from now on are answered by it
        self.on_swap(loaded)
        self._say(
            f"@{self.alias} now version {loaded.version} (package md5 {loaded.package_md5}), was version {before.version}", sys.stdout
        )

    def _say(self, line: str, stream: object = None) -> None:
        print(f"{self.who}{line}", file=stream or sys.stderr, flush=True)
