"""Serving survives the death of any of its processes, and /ping never lies (issue #23).

The real stack (nginx + gunicorn on a free loopback port, 2 workers, 8 waiting: 10 slots) under 4 steady
clients; each fault in turn, then within 30 s either every slot serves 200 again (10 concurrent requests,
none refused) with /ping 200 and every worker loaded and ready again, or `serve` has exited non-zero with
nothing of it left (no listener, no process of its tree). At no probe may /ping say 200 while a burst gets
no 200 at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from benchmarks.common.faults import FAULTS, RECOVERY_LIMIT_S, Fault, inject
from benchmarks.common.server import Server
from serve.readiness import Readiness
from serve.worker_watch import WorkerWatch, process_state

WORKERS, QUEUE = 2, 8


@pytest.fixture(scope="module")
def body(generated_dataset):
    return sorted((generated_dataset / "validation").glob("*.jpg"))[0].read_bytes()


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_after_a_process_dies_every_slot_serves_again_or_serve_exits_leaving_nothing(
    fault: Fault, trained_model_dir, body
):
    server = Server(trained_model_dir, workers=WORKERS, GLUONSEG_MAX_QUEUE=str(QUEUE)).start()
    try:
        outcome = inject(server, fault, body, workers=WORKERS, slots=WORKERS + QUEUE)
        log = server.output()
    finally:
        server.stop()
    assert outcome.lies == [], f"/ping said 200 while /invocations failed: {outcome.lies}\n{log[-3000:]}"
    if fault.exits:
        assert outcome.exited_s is not None, (
            f"{fault.name}: serve not gone within {RECOVERY_LIMIT_S} s (exit {outcome.exit_code}, "
            f"still alive: {outcome.left})\n{log[-3000:]}"
        )
        assert outcome.exit_code != 0
    else:
        assert (
            outcome.recovered_s is not None
        ), f"{fault.name}: not every slot served 200 within {RECOVERY_LIMIT_S} s\n{log[-3000:]}"
        assert outcome.load_requests > 0
    if fault.sig == signal.SIGSTOP:
        assert "stopped (SIGSTOP" in log and "killing it" in log, log[-3000:]


def test_a_stopped_worker_leaves_readiness_at_once_comes_back_if_resumed_and_is_killed_past_the_limit(tmp_path):
    now = [0.0]
    readiness = Readiness(tmp_path)
    watch = WorkerWatch(readiness, limit_s=3.0, clock=lambda: now[0])
    workers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        pids = [w.pid for w in workers]
        for pid in pids:
            readiness.mark_ready(pid)
        os.kill(pids[0], signal.SIGSTOP)
        wait_for_state(pids[0], "T")
        assert watch.check(pids) == [] and readiness.ready_pids() == [pids[1]] and readiness.is_ready()
        os.kill(pids[0], signal.SIGCONT)  # resumed within the limit: ready again, nothing killed
        wait_for_state(pids[0], "S")
        now[0] = 1.0
        assert watch.check(pids) == [] and readiness.ready_pids() == sorted(pids)

        for pid in pids:  # both stopped: /ping must say 503 at once
            os.kill(pid, signal.SIGSTOP)
            wait_for_state(pid, "T")
        now[0] = 2.0
        assert watch.check(pids) == [] and not readiness.is_ready()
        now[0] = 4.9
        assert watch.check(pids) == []  # 2.9 s stopped: under the limit
        now[0] = 5.0
        assert sorted(watch.check(pids)) == sorted(pids)
        for worker in workers:
            assert worker.wait(10) == -signal.SIGKILL
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def wait_for_state(pid: int, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while process_state(pid) != state:
        assert time.monotonic() < deadline, f"{pid} never reached state {state} (is {process_state(pid)})"
        time.sleep(0.01)
