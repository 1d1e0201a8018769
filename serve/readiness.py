"""Which gunicorn workers have their model loaded, as one flag file that nginx can test per /ping.

nginx answers /ping itself (so it never waits behind inference) from `ready`: the file exists while at
least one live worker has loaded its model. Each worker records itself in `ready.d/<pid>` once its
model is loaded (gunicorn's post_worker_init, in the worker); the gunicorn master removes a worker's
record when that worker exits, however it died (child_exit, in the master). Both sides update the
flag under one file lock, so a worker that becomes ready while another exits never leaves it wrong.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FLAG_NAME = "ready"


class Readiness:
    def __init__(self, runtime: Path) -> None:
        self.flag = Path(runtime) / FLAG_NAME
        self._records = Path(runtime) / "ready.d"
        self._lock_path = Path(runtime) / "ready.lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._records.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def mark_ready(self, pid: int) -> None:
        """Worker `pid` has its model loaded and takes requests."""
        with self._locked():
            (self._records / str(pid)).touch()
            self.flag.touch()

    def forget(self, pid: int) -> None:
        """Worker `pid` has exited: the flag goes when no loaded worker is left."""
        with self._locked():
            (self._records / str(pid)).unlink(missing_ok=True)
            if not any(self._records.iterdir()):
                self.flag.unlink(missing_ok=True)

    def clear(self) -> None:
        with self._locked():
            for record in self._records.iterdir():
                record.unlink(missing_ok=True)
            self.flag.unlink(missing_ok=True)

    def ready_pids(self) -> list[int]:
        if not self._records.is_dir():
            return []
        return sorted(int(p.name) for p in self._records.iterdir() if p.name.isdigit())

    def is_ready(self) -> bool:
        return self.flag.exists()
