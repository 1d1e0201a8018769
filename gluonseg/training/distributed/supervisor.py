"""The supervisor: what `train` runs on each host of a multi-host job, and the ps-lite role processes.

1. It joins the watchdog network (the first host, by sorted name, coordinates) and waits until every host
   has joined;
2. it starts the ps-lite roles as child processes, each with DMLC_* variables: the scheduler (first host
   only) and one server (`python -m gluonseg.training.distributed.supervisor scheduler|server`), and one
   worker, which runs the command its caller gave (the `train` entry point again) with a `dist_sync`
   KVStore;
3. it watches its children and the other hosts: any role that exits early, any host that reports a failure
   and any host silent for `GLUONSEG_PEER_TIMEOUT` seconds ends the job on every host, with
   `output/failure` naming the host.

No MXNet here: the supervisor stays light, and only the role processes load it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from gluonseg.environment import Environment, ResourceConfig
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.training.distributed.spec import SUPERVISOR_PID_ENV, ClusterSpec
from gluonseg.training.distributed.watchdog import PeerFailure, Watchdog
from gluonseg.training.stopping import Stopped
from gluonseg.util import STOPPED_EXIT_CODE

log = logging.getLogger("gluonseg.distributed")

ROLE_MODULE = "gluonseg.training.distributed.supervisor"  # `python -m ROLE_MODULE scheduler|server`
ROLE_EXIT_GRACE = 15.0  # seconds a server or scheduler gets to exit on its own after its worker finished


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class _Roles:
    """The ps-lite processes of this host: the scheduler and server as `python -m ROLE_MODULE ROLE`, the
    worker as the command the supervisor was given."""

    def __init__(self, spec: ClusterSpec, root_address: str, worker_command: Sequence[str]):
        self.spec = spec
        self.root_address = root_address
        self.worker_command = list(worker_command)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        roles = (["scheduler"] if self.spec.is_primary else []) + ["server", "worker"]
        for role in roles:
            env = self.spec.role_environment(role, self.root_address, dict(os.environ))
            command = self.worker_command if role == "worker" else [sys.executable, "-m", ROLE_MODULE, role]
            self.procs[role] = subprocess.Popen(command, env=env, close_fds=True)
            log.info("started the ps-lite %s on %s (pid %d)", role, self.spec.current_host, self.procs[role].pid)

    def exited(self) -> tuple[str, int] | None:
        """The first role that has exited abnormally, and its code; the worker first. A server or scheduler
        that exits with 0 was stopped by ps-lite after every worker finished: not a failure."""
        for role in ("worker", "server", "scheduler"):
            proc = self.procs.get(role)
            if proc is not None and proc.poll() is not None and (role == "worker" or proc.returncode != 0):
                return role, proc.returncode
        return None

    def signal_worker(self, signum: int) -> None:
        proc = self.procs.get("worker")
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signum)

    def wait_for_servers(self, grace: float) -> None:
        """After the worker finished: ps-lite stops the server and scheduler; kill them if it did not."""
        deadline = time.monotonic() + grace
        for role in ("server", "scheduler"):
            proc = self.procs.get(role)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.info("the ps-lite %s did not stop within %.0f s of the worker; stopping it", role, grace)
        self.kill()

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def _raise_failure(text: str, code: int) -> None:
    """Re-raise a failure text ('ClientError: ...' / 'AlgorithmError: ...') as the matching error."""
    prefix, sep, rest = text.partition(": ")
    if sep and prefix == ClientError.prefix:
        raise ClientError(rest)
    if sep and prefix == AlgorithmError.prefix:
        raise AlgorithmError(rest)
    raise ClientError(text) if code == 2 else AlgorithmError(text)


def supervise(env: Environment, resources: ResourceConfig, worker_command: Sequence[str]) -> None:
    """Run this host's share of a multi-host job; return on success, raise on failure.

    `worker_command` (an argv list) starts this host's worker: the caller's own entry point, which finds
    itself in a worker by `is_worker_process()` and runs it through `run_worker_process`.

    Raises the worker's own failure (same text) when this host's worker failed, PeerFailure turned into
    the origin's error kind when another host failed, and `Stopped` after a SIGTERM stop (exit code 143).
    """
    spec = ClusterSpec.from_resources(resources)
    deadline = time.monotonic() + spec.join_timeout
    primary_address = spec.address_of(spec.primary, deadline)
    log.info(
        "multi-host job: host %s is worker %d of %d; scheduler on %s (%s:%d), interface %s",
        spec.current_host,
        spec.hosts.index(spec.current_host),
        len(spec.hosts),
        spec.primary,
        primary_address,
        spec.ps_port,
        spec.interface or "auto",
    )
    watchdog = Watchdog(spec, primary_address)
    roles = _Roles(spec, primary_address, worker_command)
    terms = {"count": 0}

    def on_sigterm(signum, frame):
        terms["count"] += 1

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    failure_before = _file_state(env.failure_path)
    try:
        try:
            watchdog.start()
            watchdog.wait_until_started()
        except PeerFailure as exc:
            _raise_failure(exc.text, 1)
        roles.start()
        forwarded = 0
        while True:
            if terms["count"] > forwarded:  # StopTrainingJob: the workers agree on a batch to stop at
                roles.signal_worker(signal.SIGTERM)
                forwarded = terms["count"]
            try:
                watchdog.check(timeout=0.2)
            except PeerFailure as exc:
                roles.kill()
                log.error("stopping: %s", exc.text)
                watchdog.close()
                if exc.host == spec.current_host:
                    _raise_failure(exc.text, 1)
                prefix, _, rest = exc.text.partition(": ")
                rest = rest.removeprefix(f"host {exc.host}: ")
                if prefix == ClientError.prefix:
                    raise ClientError(f"host {exc.host}: {rest}") from None
                raise AlgorithmError(f"host {exc.host} failed, so the whole job stops: {rest}") from None
            ended = roles.exited()
            if ended is None:
                continue
            role, code = ended
            if role == "worker" and terms["count"] and code == -signal.SIGTERM:
                code = STOPPED_EXIT_CODE  # stopped before training began, when SIGTERM still ends a process
            if role == "worker" and code in (0, STOPPED_EXIT_CODE):
                watchdog.report_done(code, wait=spec.peer_timeout)
                # A stopped worker skipped ps-lite's shutdown; its servers serve nobody any more.
                roles.wait_for_servers(ROLE_EXIT_GRACE if code == 0 else 1.0)
                watchdog.close()
                if code == STOPPED_EXIT_CODE:
                    raise Stopped()
                return
            text = _local_failure_text(spec.current_host, role, code, env.failure_path, failure_before)
            log.error("%s", text)
            watchdog.report_failure(text)
            roles.kill()
            time.sleep(0.5)  # let the message reach the coordinator before the connection closes
            watchdog.close()
            _raise_failure(text, code if code > 0 else 1)
    finally:
        roles.kill()
        watchdog.close()
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


def _local_failure_text(host: str, role: str, code: int, failure_path: Path, before) -> str:
    """'ClientError: host algo-2: ...' or 'AlgorithmError: host algo-2: ...': the worker's own failure
    text when it wrote one, else what happened to the process."""
    if role == "worker" and code > 0 and _file_state(failure_path) != before:
        with contextlib.suppress(OSError):
            text = failure_path.read_text().strip()
            if text:
                prefix, sep, rest = text.partition(": ")
                return f"{prefix}: host {host}: {rest}" if sep else f"AlgorithmError: host {host}: {text}"
    what = "parameter server" if role == "server" else role
    how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with code {code}"
    if role != "worker":
        how += " while training was running"
    return f"AlgorithmError: host {host}: the {what} process {how}"


# ---------------------------------------------------------------------------------------------
# Role processes: `python -m gluonseg.training.distributed.supervisor scheduler|server`, and the worker


def die_with_parent(parent_pid_env: str = SUPERVISOR_PID_ENV) -> None:
    """Linux: SIGKILL this process when its parent dies, so no role outlives a killed `train`.

    `parent_pid_env` names the variable holding the parent's pid, to catch a parent that died first.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    expected = os.environ.get(parent_pid_env)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)


def run_worker_process(job: Callable[[], int]) -> NoReturn:
    """The worker role: tied to its supervisor, runs `job` and exits with its code."""
    die_with_parent()
    code = job()
    # Skip interpreter teardown: after a failure, the KVStore's destructor would wait in a barrier for
    # workers that will never come.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def role_main(argv: list[str]) -> int:
    role = argv[0] if argv else ""
    if role not in ("scheduler", "server") or os.environ.get("DMLC_ROLE") != role:
        print(f"usage: DMLC_ROLE=ROLE python -m {ROLE_MODULE} ROLE (got {argv})", file=sys.stderr)
        return 2
    die_with_parent()
    import mxnet  # noqa: F401 - with DMLC_ROLE set, importing MXNet runs the ps-lite loop until shutdown

    return 0


if __name__ == "__main__":
    from gluonseg.training.distributed import supervisor as _module  # the importable copy, not this __main__ one

    sys.exit(_module.role_main(sys.argv[1:]))
