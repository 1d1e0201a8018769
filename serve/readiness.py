"""Which gunicorn workers have their model loaded, as one flag file that nginx can test per /ping.

nginx answers /ping itself (so it never waits behind inference) from `ready`: the file exists while at
least one live worker has loaded its model. Each worker records itself in `ready.d/<pid>` once its
model is loaded (gunicorn's post_worker_init, in the worker); the gunicorn master removes a worker's
record when that worker exits, however it died (child_exit, in the master). Both sides update the
flag under one file lock, so a worker that becomes ready while another exits never leaves it wrong.

The master's update runs inside gunicorn's SIGCHLD handler, which can interrupt the master's own update
for the worker that exited a moment before: a second flock on a new descriptor would then wait on the
process itself, for good (seen in CI: two workers exiting together left the master hung, holding the
port, after its supervisor died). A change made while this process already holds the lock is therefore
queued and applied by the holder before it lets go.
"""

from __future__ import annotations

import fcntl
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

FLAG_NAME = "ready"


class Readiness:
    def __init__(self, runtime: Path) -> None:
        self.flag = Path(runtime) / FLAG_NAME
        self._records = Path(runtime) / "ready.d"
        self._lock_path = Path(runtime) / "ready.lock"
        self._changes: deque[Callable[[], None]] = deque()
        self._holder: int | None = None  # the pid inside _apply (a forked child inherits a stale value)

    def _apply(self, change: Callable[[], None]) -> None:
        self._changes.append(change)
        if self._holder == os.getpid():
            return  # a signal handler interrupted this process's own update: that update applies it
        while self._changes:
            # Marked as holder before the flock: a handler that runs while the flock is retried after
            # EINTR queues its change instead of taking a second lock on itself.
            self._holder = os.getpid()
            try:
                self._records.mkdir(parents=True, exist_ok=True)
                with open(self._lock_path, "a") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    try:
                        while self._changes:
                            self._changes.popleft()()
                    finally:
                        fcntl.flock(handle, fcntl.LOCK_UN)
            finally:
                self._holder = None
            # a change queued after the inner loop emptied the queue, before the holder mark went: once more

    def mark_ready(self, pid: int) -> None:
        """Worker `pid` has its model loaded and takes requests."""

        def change() -> None:
            (self._records / str(pid)).touch()
            self.flag.touch()

        self._apply(change)

    def forget(self, pid: int) -> None:
        """Worker `pid` has exited: the flag goes when no loaded worker is left."""

        def change() -> None:
            (self._records / str(pid)).unlink(missing_ok=True)
            if not any(self._records.iterdir()):
                self.flag.unlink(missing_ok=True)

        self._apply(change)

    def clear(self) -> None:
        def change() -> None:
            for record in self._records.iterdir():
                record.unlink(missing_ok=True)
            self.flag.unlink(missing_ok=True)

        self._apply(change)

    def ready_pids(self) -> list[int]:
        if not self._records.is_dir():
            return []
        return sorted(int(p.name) for p in self._records.iterdir() if p.name.isdigit())

    def is_ready(self) -> bool:
        return self.flag.exists()
