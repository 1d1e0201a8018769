"""The readiness flag under the master's SIGCHLD handler (serve/readiness.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from serve.readiness import Readiness

# In a child process: every flock that takes the lock sends the process SIGUSR1 once, whose handler (as
# gunicorn's SIGCHLD handler does with child_exit) updates the same Readiness from inside that update.
INTERRUPTED_UPDATE = textwrap.dedent(
    """
    import fcntl, os, signal, sys
    from serve import readiness as module

    runtime = sys.argv[1]
    ready = module.Readiness(runtime)
    for pid in (11, 12, 13):
        ready.mark_ready(pid)

    real_flock, fired = fcntl.flock, []

    def flock(handle, op):
        real_flock(handle, op)
        if op == fcntl.LOCK_EX and not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs at once, inside the lock

    module.fcntl.flock = flock
    signal.signal(signal.SIGUSR1, lambda *_: ready.forget(12))
    ready.forget(11)
    assert fired, "the handler never ran"
    print(ready.ready_pids(), ready.is_ready())
    ready.forget(13)
    print(ready.ready_pids(), ready.is_ready())
    """
)


def test_an_update_interrupted_by_a_handler_that_updates_too_finishes_both(tmp_path: Path):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_UPDATE, str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,  # before the fix: the nested flock waited on its own process forever
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[13] True", "[] False"]


def test_the_flag_stays_while_one_loaded_worker_is_left(tmp_path: Path):
    ready = Readiness(tmp_path)
    assert not ready.is_ready() and ready.ready_pids() == []
    ready.mark_ready(5)
    ready.mark_ready(6)
    ready.forget(5)
    assert ready.is_ready() and ready.ready_pids() == [6]
    ready.forget(6)
    assert not ready.is_ready()
    ready.mark_ready(7)
    ready.clear()
    assert not ready.is_ready() and ready.ready_pids() == []
