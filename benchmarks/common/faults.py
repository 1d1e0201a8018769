"""Fault injection on the real serving stack: kill or stop one of its processes under load, then measure how
long until every slot serves again, or until `serve` is gone with nothing of it left.

The stack is five kinds of process: the `serve` supervisor, the nginx master and its worker, the gunicorn
master and its workers. A fault is a signal to one of them; what must follow (issue #23) is either a full
recovery (a burst of as many concurrent requests as there are slots, workers + queue, every one a 200, and
/ping 200; then every worker loaded and ready again: full capacity) or an exit: `serve` ends non-zero,
nothing listens on its port, and no process of its tree is left. Used by tests/e2e/test_serving_faults.py
and benchmarks/faults.py, so the suite and BENCHMARKS.md measure alike.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from benchmarks.common.server import Server
from serve.readiness import Readiness
from serve.worker_watch import child_pids, process_state

HEADERS = {"Content-Type": "image/jpeg", "Accept": "image/png"}
RECOVERY_LIMIT_S = 30.0


def alive(pid: int) -> bool:
    """Running (a zombie is not: it only waits to be reaped)."""
    return process_state(pid) not in (None, "Z")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Tree:
    """The server's processes, read once it is up."""

    supervisor: int
    nginx_master: int
    nginx_workers: list[int]
    gunicorn_master: int
    gunicorn_workers: list[int]

    @classmethod
    def of(cls, server: Server) -> Tree:
        nginx, gunicorn = server.nginx_pid(), server.master_pid()
        return cls(server.proc.pid, nginx, child_pids(nginx), gunicorn, child_pids(gunicorn))

    def all(self) -> list[int]:
        return [self.supervisor, self.nginx_master, *self.nginx_workers, self.gunicorn_master, *self.gunicorn_workers]


@dataclass(frozen=True)
class Fault:
    name: str
    target: Callable[[Tree], int]  # which process
    sig: int
    exits: bool  # serve is expected to exit (non-zero, nothing left) rather than recover
    busy: bool = False  # wait until the target holds a request (the OOM killer picks a busy worker)


FAULTS = (
    Fault("gunicorn worker SIGKILL", lambda t: t.gunicorn_workers[0], signal.SIGKILL, exits=False),
    Fault(
        "gunicorn worker killed for memory mid-request",
        lambda t: t.gunicorn_workers[0],
        signal.SIGKILL,
        exits=False,
        busy=True,
    ),
    Fault("gunicorn worker SIGSTOP (a hang)", lambda t: t.gunicorn_workers[0], signal.SIGSTOP, exits=False),
    Fault("nginx worker SIGKILL", lambda t: t.nginx_workers[0], signal.SIGKILL, exits=False),
    Fault("gunicorn master SIGKILL", lambda t: t.gunicorn_master, signal.SIGKILL, exits=True),
    Fault("nginx master SIGKILL", lambda t: t.nginx_master, signal.SIGKILL, exits=True),
    Fault("serve supervisor SIGKILL", lambda t: t.supervisor, signal.SIGKILL, exits=True),
)


@dataclass
class Outcome:
    fault: str
    recovered_s: float | None = None  # a full burst of 200s and /ping 200, this long after the fault
    full_s: float | None = None  # every worker alive, loaded and counted ready again, this long after the fault
    exited_s: float | None = None  # serve gone with nothing left, this long after the fault
    exit_code: int | None = None
    lies: list[str] = field(default_factory=list)  # /ping 200 while a burst got no 200 at all
    load_errors: int = 0  # what the steady clients saw fail around the fault
    load_requests: int = 0
    left: list[int] = field(default_factory=list)  # processes of the tree still alive after the exit


class SteadyLoad:
    """`clients` threads posting back to back until stopped, counting answers (the fault happens under them)."""

    def __init__(self, url: str, body: bytes, clients: int) -> None:
        self.url, self.body = url, body
        self.stop_event = threading.Event()
        self.statuses: list[int | str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop_event.is_set():
            try:
                status: int | str = requests.post(
                    self.url + "/invocations", data=self.body, headers=HEADERS, timeout=70
                ).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
                time.sleep(0.2)  # a refused connection comes back at once: do not spin
            with self.lock:
                self.statuses.append(status)

    def start(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop issuing; the requests in flight finish on their own."""
        self.stop_event.set()

    def join(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(75)


def burst(url: str, body: bytes, count: int) -> list[int | str]:
    """`count` requests at once: each one's status (or exception name)."""

    def one(_: int) -> int | str:
        try:
            return requests.post(url + "/invocations", data=body, headers=HEADERS, timeout=70).status_code
        except requests.RequestException as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def ping(url: str) -> int | str:
    try:
        return requests.get(url + "/ping", timeout=2).status_code
    except requests.RequestException as exc:
        return type(exc).__name__


def wait_busy(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` is on a CPU (running a request: an idle sync worker sleeps in select)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) == "R":
            return
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} never got a request in {timeout} s")


def full_capacity(server: Server, workers: int) -> bool:
    """`workers` workers counted ready (their model loaded) and every one of them running, none stopped."""
    ready = Readiness(Path(server.env["GLUONSEG_RUNTIME_DIR"])).ready_pids()
    return len(ready) == workers and all(process_state(pid) in ("R", "S", "D") for pid in ready)


def inject(server: Server, fault: Fault, body: bytes, workers: int, slots: int, clients: int = 4) -> Outcome:
    """Under `clients` steady clients, send `fault`, then watch for recovery or the exit (RECOVERY_LIMIT_S)."""
    tree = Tree.of(server)
    outcome = Outcome(fault.name)
    victim = fault.target(tree)
    load = SteadyLoad(server.url, body, clients).start()
    try:
        time.sleep(1.0)
        if fault.busy:
            wait_busy(victim)
        os.kill(victim, fault.sig)
        start = time.monotonic()
        # The fault strikes under load; the probes below are bursts of every slot, so the steady clients
        # stop issuing (what they hold finishes, or fails, on its own).
        time.sleep(1.0)
        load.stop()
        while time.monotonic() - start < RECOVERY_LIMIT_S:
            if fault.exits:
                if server.proc.poll() is not None:
                    outcome.exit_code = server.proc.returncode
                    if not listening(server.port) and not [p for p in tree.all() if alive(p)]:
                        outcome.exited_s = time.monotonic() - start
                        break
                time.sleep(0.1)
                continue
            pinged = ping(server.url)
            statuses = burst(server.url, body, slots)
            if pinged == 200 and 200 not in statuses:
                outcome.lies.append(f"{time.monotonic() - start:.1f} s: /ping 200, burst {statuses}")
            if outcome.recovered_s is None and pinged == 200 and statuses == [200] * slots:
                outcome.recovered_s = time.monotonic() - start
            if outcome.full_s is None and full_capacity(server, workers):
                outcome.full_s = time.monotonic() - start
            if outcome.recovered_s is not None and outcome.full_s is not None:
                break
            time.sleep(0.2)
    finally:
        if fault.sig == signal.SIGSTOP and alive(victim):
            os.kill(victim, signal.SIGCONT)  # never leave a stopped process behind, whatever happened
        load.join()
    if fault.exits and outcome.exited_s is None:
        outcome.left = [p for p in tree.all() if alive(p)]
    outcome.load_requests = len(load.statuses)
    outcome.load_errors = sum(1 for s in load.statuses if s != 200)
    return outcome
