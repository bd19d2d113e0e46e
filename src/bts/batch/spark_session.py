"""A Spark session for batch scoring: a usable Java first, quiet consoles, the library shipped to the executors.

The session runs on any master (`local[*]` unless told otherwise) with the
settings every batch needs (UTC, Arrow, no progress bar, Spark's own log at
ERROR) and the user's --conf on top. A missing or old Java is one line saying
how to get one; a failed Spark job is one line naming what failed. While a job
runs, the task counts of its stages are said every few seconds instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bts.batch import DEFAULT_MASTER
from bts.errors import BtsError, quoted
from bts.model.package import library_path

if TYPE_CHECKING:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

APP_NAME = "bts-batch-predict"
MIN_JAVA = 17  # Spark 4 runs on Java 17 and 21
JAVA_INSTALL = "sudo apt-get install openjdk-17-jre-headless"
PANDAS_WARNING = "PySpark does not yet fully support pandas"  # a FutureWarning per conversion under pandas 3 (tested: what we use works)
QUIET_WARNINGS = f"ignore:{PANDAS_WARNING}:FutureWarning"
DRIVER_MEMORY = "4g"  # Spark's 1g default: local tasks spent a fifth of their time collecting garbage on 1M readings
PROGRESS_SECONDS = 3.0
SPARK_FAILURE_CHARACTERS = 200  # of a Spark failure, what the one-line message quotes
# Spark's console while a batch runs: errors only. A user's own log4j2 file wins when given by
# --conf spark.driver.extraJavaOptions=-Dlog4j2.configurationFile=<file> (the last -D of a property counts).
LOG4J = """\
status = error
rootLogger.level = error
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark: %p %c{1}: %m%n%ex{3}
# pyspark starts Spark as a shell, which sets the root level to WARN and says so unless Spark's loggers are configured
logger.spark.name = org.apache.spark
logger.spark.level = error
# a failed task is reported once, as one line, by `bts batch-predict`
logger.executor.name = org.apache.spark.executor.Executor
logger.executor.level = off
logger.tasks.name = org.apache.spark.scheduler.TaskSetManager
logger.tasks.level = off
"""


class JavaRuntimeError(BtsError):
    """No Java runtime Spark can run on."""


class SparkError(BtsError):
    """Spark did not start, or one of its jobs failed."""


def java_major(version_text: str) -> int | None:
    """The major version in `java -version` output ('17.0.15' -> 17, '1.8.0_392' -> 8); None if there is none."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or major) if major == 1 else major


def java_runtime(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """The java Spark would start (JAVA_HOME's, else the one on PATH) and its major version; a JavaRuntimeError if unusable."""
    environ = os.environ if environ is None else environ
    home = environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java", path=environ.get("PATH", os.defpath))
    where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH"
    if not java or not os.access(java, os.X_OK):
        raise JavaRuntimeError(f"no Java runtime for Spark ({where}); install Java {MIN_JAVA} or later, e.g. `{JAVA_INSTALL}`")
    try:
        answer = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaRuntimeError(f"{java} -version failed ({exc}); install Java {MIN_JAVA} or later, e.g. `{JAVA_INSTALL}`") from None
    major = java_major(answer.stderr + answer.stdout)
    if answer.returncode != 0 or major is None or major < MIN_JAVA:
        found = f"Java {major}" if major else "no Java version in `java -version`"
        raise JavaRuntimeError(f"{java}: {found}; Spark needs Java {MIN_JAVA} or later, e.g. `{JAVA_INSTALL}` (or set JAVA_HOME)")
    return java, major


def session_settings(master: str | None, conf: Mapping[str, str], log_config: Path) -> dict[str, str]:
    """The session's settings: quiet, UTC, Arrow on, then the user's --conf (their JVM options after ours), then --master."""
    settings = {
        "spark.master": DEFAULT_MASTER,
        "spark.app.name": APP_NAME,
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.driver.memory": DRIVER_MEMORY,
        "spark.executorEnv.PYTHONWARNINGS": QUIET_WARNINGS,
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log_config.as_uri()}",
    }
    for key, value in conf.items():
        settings[key] = f"{settings[key]} {value}" if key == "spark.driver.extraJavaOptions" else value
    if master:
        settings["spark.master"] = master
    return settings


def library_zip(into: Path) -> Path:
    """The `bts` package this process imported, zipped for the executors: they run the very code the driver runs."""
    library = library_path()
    target = into / "bts.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(library.rglob("*.py")):
            archive.write(source, (Path("bts") / source.relative_to(library)).as_posix())
    return target


def quiet_python_warnings() -> None:
    """Silence PySpark's warning about pandas 3 in this process (executors get QUIET_WARNINGS in their environment)."""
    warnings.filterwarnings("ignore", message=PANDAS_WARNING, category=FutureWarning)


@contextmanager
def spark_session(master: str | None = None, conf: Mapping[str, str] | None = None) -> Iterator[SparkSession]:
    """A SparkSession on master (default local[*]) with conf, the library shipped to its executors; stopped at the end."""
    java_runtime()
    quiet_python_warnings()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need this environment's pandas and scikit-learn
    from pyspark.sql import SparkSession

    with tempfile.TemporaryDirectory(prefix="bts-spark-") as scratch:
        log_config = Path(scratch) / "log4j2.properties"
        log_config.write_text(LOG4J, encoding="utf-8")
        settings = session_settings(master, conf or {}, log_config)
        builder = SparkSession.builder
        for key, value in settings.items():
            builder = builder.config(key, value)
        try:
            spark = builder.getOrCreate()
        except Exception as exc:  # the JVM did not start or the master is unreachable: pyspark and py4j raise many kinds
            raise SparkError(f"Spark did not start on {settings['spark.master']} ({failure_line(exc)})") from None
        try:
            spark.sparkContext.addPyFile(str(library_zip(Path(scratch))))
            yield spark
        finally:
            spark.stop()


def failure_line(exc: BaseException) -> str:
    """The line worth showing of a Spark failure: the exception line of a Python worker's traceback, or the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)(: |$)", line)]
    line = raised[-1] if raised else (lines[0] if lines else type(exc).__name__)
    return quoted(line, SPARK_FAILURE_CHARACTERS)


@contextmanager
def spark_step(action: str) -> Iterator[None]:
    """Turn a failed Spark job into one SparkError line."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (Py4JError, PySparkException) as exc:
        raise SparkError(f"spark: {action} failed: {failure_line(exc)}") from None


class SparkProgress:
    """The running step's task counts, said every few seconds while Spark works (its own progress bar is off)."""

    def __init__(self, context: SparkContext, say: Callable[[str], None], interval: float = PROGRESS_SECONDS) -> None:
        self._context, self._say, self._interval = context, say, interval
        self._step = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bts-spark-progress", daemon=True)

    def __enter__(self) -> SparkProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def step(self, name: str) -> None:
        """Name the step the next jobs belong to, here and as their description (the Spark UI's and event log's)."""
        self._step = name
        self._context.setJobDescription(name)

    def _watch(self) -> None:
        tracker, said = self._context.statusTracker(), None
        while not self._stop.wait(self._interval):
            try:
                stages = [info for info in map(tracker.getStageInfo, tracker.getActiveStageIds()) if info is not None]
            except Exception:  # the session is going away: nothing more to say
                return
            if stages:
                state = (self._step, sum(s.numCompletedTasks for s in stages), sum(s.numTasks for s in stages))
                if state != said:
                    self._say(f"{state[0]}: {state[1]}/{state[2]} tasks done")
                    said = state


if __name__ == "__main__":  # `make java`: the runtime Spark would use, or how to get one
    try:
        found, version = java_runtime()
    except JavaRuntimeError as exc:
        sys.exit(f"java: {exc}")
    print(f"java: {found} (Java {version}), as Spark needs")
