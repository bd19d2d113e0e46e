"""Where a test may stop a process with a real SIGKILL (a registration, a training mid-logging), to prove that what a
killed process leaves behind is reported and completed by the next call; or pause it (SIGSTOP) to break what it talks
to (a tracking server, its database) while it is in the middle, then let it go on (SIGCONT)."""

from __future__ import annotations

import os
import signal

KILL_POINT_VARIABLE = "BTS_TEST_KILL_AT"
STOP_POINT_VARIABLE = "BTS_TEST_STOP_AT"


def kill_point(name: str) -> None:
    if os.environ.get(KILL_POINT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STOP_POINT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
