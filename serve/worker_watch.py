"""gunicorn workers that are alive but cannot serve: stopped by a signal (SIGSTOP, a job-control or debugger stop).

gunicorn replaces a worker that exits, and one that has not notified it for its timeout (here the request
timeout plus a margin, 90 s by default); a stopped worker is neither for all that time, keeps the request it
held, and was still counted ready by /ping. The supervisor (serve/entry.py) asks `check` every poll: a worker
seen stopped leaves the readiness record at once (so /ping says 503 when no worker can serve), and one
stopped for STOPPED_LIMIT_S is killed, so gunicorn starts another and nginx answers the held request with a
502 instead of a 504 a minute later. A worker resumed before the limit is counted ready again. The limit
leaves room for a profiler's or debugger's short stops (py-spy's dump stops a process for milliseconds).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from serve.readiness import Readiness

log = logging.getLogger("gluonseg.serve")

STOPPED_LIMIT_S = 3.0
STOPPED_STATES = ("T", "t")  # stopped by a signal; stopped while traced


def process_state(pid: int) -> str | None:
    """The one-letter state of /proc/PID/stat (R, S, D, T, t, Z, ...); None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def child_pids(pid: int) -> list[int]:
    """The children of process `pid` (gunicorn's workers of its master)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: the parent field of every process
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        return found


class WorkerWatch:
    def __init__(
        self, readiness: Readiness, limit_s: float = STOPPED_LIMIT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.readiness = readiness
        self.limit_s = limit_s
        self.clock = clock
        self.stopped_since: dict[int, float] = {}
        self.was_ready: set[int] = set()

    def check(self, workers: list[int]) -> list[int]:
        """Act on the stopped among `workers` (see the module docstring); the pids killed now."""
        now = self.clock()
        killed = []
        for pid in workers:
            state = process_state(pid)
            if state in STOPPED_STATES:
                if pid not in self.stopped_since:
                    self.stopped_since[pid] = now
                    if pid in self.readiness.ready_pids():
                        self.was_ready.add(pid)
                        self.readiness.forget(pid)
                    log.warning("worker %d is stopped (state %s): not ready while it stays so", pid, state)
                elif now - self.stopped_since[pid] >= self.limit_s:
                    log.error(
                        "worker %d stopped (SIGSTOP or a debugger) for %.0f s: killing it; gunicorn starts another",
                        pid,
                        now - self.stopped_since[pid],
                    )
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    killed.append(pid)
                    self.stopped_since.pop(pid)
                    self.was_ready.discard(pid)
            elif pid in self.stopped_since:
                del self.stopped_since[pid]
                if pid in self.was_ready and state is not None:
                    self.was_ready.discard(pid)
                    self.readiness.mark_ready(pid)
                    log.info("worker %d resumed: ready again", pid)
        for pid in [pid for pid in self.stopped_since if pid not in workers]:  # gone meanwhile
            self.stopped_since.pop(pid)
            self.was_ready.discard(pid)
        return killed
