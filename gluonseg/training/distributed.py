"""Multi-host data-parallel training on MXNet's parameter-server KVStore (ps-lite).

When `resourceconfig.json` lists more than one host, `train` on every host is a small supervisor:
1. it joins a watchdog network over TCP that the first host (sorted names) runs, and waits until every
   host has joined;
2. it starts the ps-lite roles as child processes, each with DMLC_* variables: the scheduler (first host
   only), one server and one worker. The worker re-enters `train` (`python -m gluonseg.training.distributed
   worker`) and trains with a `dist_sync` KVStore (`dist_device_sync` on GPUs);
3. it watches its children and the other hosts. ps-lite waits forever for a peer that died, so any role
   that exits early, any host that reports a failure and any host silent for `GLUONSEG_PEER_TIMEOUT`
   seconds ends the job on every host, with `output/failure` naming the host.

Inside the worker, `Cluster` wraps the KVStore for what gluon.Trainer does not do: agreeing on the number
of iterations per epoch and on stop requests, averaging BatchNorm running statistics, summing confusion
matrices, and broadcasting the first host's checkpoint. Gradients go through gluon.Trainer with
`update_on_kvstore=False`: servers only sum gradients and every worker runs the same optimizer on the same
sums, so the learning-rate schedule counts global iterations on each worker and the parameters stay
identical: every epoch the workers compare a digest of them, and one that differs takes the first host's.

The ps-lite servers store and sum float32 only, so integers travel as 16-bit limbs (exact for up to 256
hosts) and byte strings as uint16 values; see `allreduce_int` and `broadcast_bytes`.

This module imports MXNet only inside the worker-side functions: the supervisor stays light.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gluonseg.environment import Environment, ResourceConfig
from gluonseg.errors import AlgorithmError, ClientError

log = logging.getLogger("gluonseg.distributed")

# Environment variables (all optional). The defaults suit SageMaker; the local launcher overrides them.
PS_PORT_ENV = "GLUONSEG_PS_ROOT_PORT"  # the scheduler's port on the first host
WATCHDOG_PORT_ENV = "GLUONSEG_WATCHDOG_PORT"  # the watchdog's port on the first host
PEER_TIMEOUT_ENV = "GLUONSEG_PEER_TIMEOUT"  # seconds a silent host is tolerated
JOIN_TIMEOUT_ENV = "GLUONSEG_JOIN_TIMEOUT"  # seconds to wait for every host to start
HOST_ADDRESSES_ENV = "GLUONSEG_HOST_ADDRESSES"  # "algo-1=10.0.0.1,algo-2=10.0.0.2": skips DNS
SUPERVISOR_PID_ENV = "GLUONSEG_SUPERVISOR_PID"  # set in role processes; marks the worker process

DEFAULT_PS_PORT = 9000
DEFAULT_PEER_TIMEOUT = 60.0
DEFAULT_JOIN_TIMEOUT = 600.0
ROLE_EXIT_GRACE = 15.0  # seconds a server or scheduler gets to exit on its own after its worker finished
STOPPED_EXIT_CODE = 143

# ps-lite picks a server with (key * 9973) % num_servers in a C int, so keys must stay below
# 2**31 / 9973 (~215,000) or the product overflows; gluon.Trainer uses 0..num_params-1.
RESERVED_KEY_BASE = 200_000
RESERVED_KEY_LIMIT = 215_000
LIMB_BITS = 16
LIMBS = 4  # 64-bit counts as four 16-bit limbs; a sum of up to 256 limbs stays below 2**24, exact in float32
MAX_HOSTS = 256


# ---------------------------------------------------------------------------------------------
# Which data each host trains on (no MXNet needed)


def host_index(resources: ResourceConfig) -> int:
    """This host's position in the sorted host list: its worker index and data shard."""
    return resources.hosts.index(resources.current_host)


def split_for_host(samples: Sequence[Any], distribution: str, resources: ResourceConfig) -> list[Any]:
    """The samples this host trains or validates on.

    ShardedByS3Key: SageMaker already gave each host its own objects, so all of them. FullyReplicated: every
    host holds everything, so host i of n takes samples i, i+n, i+2n, ... of the sorted list (disjoint, and
    together they cover the set).
    """
    if distribution == "ShardedByS3Key":
        return list(samples)
    return list(samples)[host_index(resources) :: len(resources.hosts)]


def pair_host_shard(image_dir: Path, mask_dir: Path) -> list[Any]:
    """Pairing for an image channel sharded by S3 key: this host holds only its share of the images, so
    masks without an image are expected (e.g. a FullyReplicated annotation channel); an image without a
    mask is still an error."""
    from gluonseg.data.channels import IMAGE_EXTENSIONS, MASK_EXTENSIONS, Sample, _visible_files, pair_channel
    from gluonseg.errors import list_with_limit

    images, _ = _visible_files(image_dir, IMAGE_EXTENSIONS) if image_dir.is_dir() else ({}, [])
    masks, _ = _visible_files(mask_dir, MASK_EXTENSIONS) if mask_dir.is_dir() else ({}, [])
    if not images or not masks:
        return pair_channel(image_dir, mask_dir)  # its messages for missing or empty channels
    lonely = sorted(set(images) - set(masks))
    if lonely:
        raise ClientError(
            f"{len(lonely)} image(s) in '{image_dir.name}' (ShardedByS3Key) have no mask of the same name in "
            f"'{mask_dir.name}' on this host: "
            + list_with_limit([str(images[k].relative_to(image_dir)) for k in lonely])
            + ". Shard only the image channels and keep the annotation channels FullyReplicated, so every "
            "host holds the masks of its images"
        )
    return [Sample(key, images[key], masks[key]) for key in sorted(images)]


# ---------------------------------------------------------------------------------------------
# The cluster's addresses and the ps-lite roles' environment


def parse_host_addresses(text: str | None) -> dict[str, str]:
    """`algo-1=10.0.0.1,algo-2=10.0.0.2` -> {host: address}."""
    addresses: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        host, sep, address = item.partition("=")
        if not sep or not host.strip() or not address.strip():
            raise ClientError(f"{HOST_ADDRESSES_ENV}: '{item}' is not HOST=ADDRESS")
        addresses[host.strip()] = address.strip()
    return addresses


def _env_number(environ: dict[str, str], name: str, default: float, kind=float) -> Any:
    value = environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ClientError(f"{name} must be a number, got {value!r}") from None
    if number <= 0:
        raise ClientError(f"{name} must be positive, got {value!r}")
    return number


@dataclass(frozen=True)
class ClusterSpec:
    """Where everything runs: hosts, ports, network interface, timeouts."""

    hosts: tuple[str, ...]
    current_host: str
    interface: str | None = None
    ps_port: int = DEFAULT_PS_PORT
    watchdog_port: int = DEFAULT_PS_PORT + 1
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    addresses: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_resources(cls, resources: ResourceConfig, environ: dict[str, str] | None = None) -> ClusterSpec:
        environ = dict(os.environ if environ is None else environ)
        if len(resources.hosts) > MAX_HOSTS:
            raise ClientError(
                f"at most {MAX_HOSTS} hosts are supported, resourceconfig.json lists {len(resources.hosts)}"
            )
        ps_port = _env_number(environ, PS_PORT_ENV, DEFAULT_PS_PORT, int)
        return cls(
            hosts=tuple(resources.hosts),
            current_host=resources.current_host,
            interface=resources.network_interface_name or None,
            ps_port=ps_port,
            watchdog_port=_env_number(environ, WATCHDOG_PORT_ENV, ps_port + 1, int),
            peer_timeout=_env_number(environ, PEER_TIMEOUT_ENV, DEFAULT_PEER_TIMEOUT),
            join_timeout=_env_number(environ, JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT),
            addresses=parse_host_addresses(environ.get(HOST_ADDRESSES_ENV)),
        )

    @property
    def primary(self) -> str:
        return self.hosts[0]

    @property
    def is_primary(self) -> bool:
        return self.current_host == self.primary

    def address_of(self, host: str, deadline: float) -> str:
        """The IP address of `host`. SageMaker's host names can take a while to resolve, so retry."""
        if host in self.addresses:
            return self.addresses[host]
        while True:
            try:
                return socket.gethostbyname(host)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise AlgorithmError(f"cannot resolve the address of host {host}: {exc}") from None
                time.sleep(1.0)

    def role_environment(self, role: str, root_address: str, base: dict[str, str]) -> dict[str, str]:
        """The environment of one ps-lite process (role: scheduler, server or worker)."""
        env = {k: v for k, v in base.items() if not k.startswith("DMLC_") and k != "PS_VERBOSE"}
        n = str(len(self.hosts))
        env.update(
            DMLC_ROLE=role,
            DMLC_PS_ROOT_URI=root_address,
            DMLC_PS_ROOT_PORT=str(self.ps_port),
            DMLC_NUM_SERVER=n,
            DMLC_NUM_WORKER=n,
        )
        if self.interface:
            env["DMLC_INTERFACE"] = self.interface
        elif self.current_host in self.addresses:
            env["DMLC_NODE_HOST"] = self.addresses[self.current_host]
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        return env


def is_worker_process() -> bool:
    """True in the worker that the supervisor started (not in the supervisor itself)."""
    return os.environ.get("DMLC_ROLE") == "worker" and bool(os.environ.get(SUPERVISOR_PID_ENV))


# ---------------------------------------------------------------------------------------------
# The watchdog network: the first host's supervisor is the coordinator, the others are members.
# Messages are JSON lines: hello, start, ping, fail, done, abort.


class PeerFailure(Exception):
    """Another host failed, or went silent: the job must stop."""

    def __init__(self, host: str, text: str):
        super().__init__(text)
        self.host = host
        self.text = text


class _Line:
    """One TCP connection carrying JSON lines; sends are serialised by a lock."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("r", encoding="utf-8", newline="\n")
        self.lock = threading.Lock()

    def send(self, **message: Any) -> bool:
        data = (json.dumps(message) + "\n").encode()
        try:
            with self.lock:
                self.sock.sendall(data)
            return True
        except OSError:
            return False

    def messages(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self.reader:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    yield message
        except (OSError, ValueError):
            return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class Watchdog:
    """Liveness between the hosts' supervisors; failures come out of `check()` as PeerFailure."""

    def __init__(self, spec: ClusterSpec, primary_address: str):
        self.spec = spec
        self.primary_address = primary_address
        self.members = [h for h in spec.hosts if h != spec.primary]
        self.interval = max(0.2, min(5.0, spec.peer_timeout / 6))
        self._events: queue.Queue = queue.Queue()
        self._lines: dict[str, _Line] = {}
        self._last_seen: dict[str, float] = {}
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._started = threading.Event()
        self._server: socket.socket | None = None
        self._join_deadline = time.monotonic() + spec.join_timeout

    # -- lifecycle
    def start(self) -> None:
        if self.spec.is_primary:
            self._server = socket.create_server(("", self.spec.watchdog_port), reuse_port=False, backlog=64)
            self._server.settimeout(0.5)
            self._thread(self._accept_loop)
        else:
            line = self._connect()
            with self._lock:
                self._lines[self.spec.primary] = line
                self._last_seen[self.spec.primary] = time.monotonic()
            line.send(type="hello", host=self.spec.current_host)
            self._thread(self._read_loop, self.spec.primary, line)
        self._thread(self._heartbeat_loop)

    def wait_until_started(self) -> None:
        """Coordinator: until every member joined, then tell them to start. Member: until told to start."""
        while not self._started.is_set():
            if self.spec.is_primary:
                with self._lock:
                    joined = all(h in self._lines for h in self.members)
                if joined:
                    self._broadcast(type="start")
                    self._started.set()
                    break
                if time.monotonic() > self._join_deadline:
                    with self._lock:
                        missing = [h for h in self.members if h not in self._lines]
                    text = (
                        f"host(s) {', '.join(missing)} did not start within {self.spec.join_timeout:.0f} s "
                        f"({JOIN_TIMEOUT_ENV})"
                    )
                    self._broadcast(type="abort", host=missing[0], text=f"AlgorithmError: {text}")
                    raise PeerFailure(missing[0], f"AlgorithmError: {text}")
            self.check(timeout=0.2)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            lines = list(self._lines.values())
        for line in lines:
            line.close()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()

    # -- reporting
    def report_failure(self, text: str) -> None:
        """Tell the other hosts that this one failed (the coordinator relays it to every member)."""
        if self.spec.is_primary:
            self._broadcast(type="abort", host=self.spec.current_host, text=text)
        else:
            self._send(self.spec.primary, type="fail", host=self.spec.current_host, text=text)

    def report_done(self, code: int, wait: float) -> None:
        """This host's worker finished. The coordinator waits (up to `wait` s) for the members to finish
        too, so that it does not stop the scheduler under them, then says so to everyone."""
        if not self.spec.is_primary:
            self._send(self.spec.primary, type="done", host=self.spec.current_host, code=code)
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._lock:
                if all(h in self._done for h in self.members):
                    break
            with contextlib.suppress(PeerFailure):
                self.check(timeout=0.2)
        self._broadcast(type="done", host=self.spec.current_host, code=code)

    def check(self, timeout: float = 0.0) -> None:
        """Raise PeerFailure for the first failure seen; wait up to `timeout` seconds for news."""
        try:
            event = self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
        except queue.Empty:
            event = None
        if event is not None:
            kind, host, text = event
            if kind == "abort":
                raise PeerFailure(host, text)
        now = time.monotonic()
        with self._lock:
            silent = [
                h
                for h, seen in self._last_seen.items()
                if h not in self._done and now - seen > self.spec.peer_timeout and self._started.is_set()
            ]
        if silent:
            host = silent[0]
            text = (
                f"AlgorithmError: host {host} has not been heard from for {self.spec.peer_timeout:.0f} s "
                f"({PEER_TIMEOUT_ENV}); it is down or unreachable"
            )
            if self.spec.is_primary:
                self._broadcast(type="abort", host=host, text=text)
            raise PeerFailure(host, text)

    # -- threads
    def _thread(self, target, *args) -> None:
        threading.Thread(target=target, args=args, daemon=True, name=f"watchdog-{target.__name__}").start()

    def _connect(self) -> _Line:
        last_error: Exception | None = None
        while time.monotonic() < self._join_deadline:
            try:
                sock = socket.create_connection((self.primary_address, self.spec.watchdog_port), timeout=5)
                sock.settimeout(None)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                return _Line(sock)
            except OSError as exc:
                last_error = exc
                time.sleep(0.5)
        raise PeerFailure(
            self.spec.primary,
            f"AlgorithmError: cannot reach the first host {self.spec.primary} "
            f"({self.primary_address}:{self.spec.watchdog_port}) within {self.spec.join_timeout:.0f} s: {last_error}",
        )

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            line = _Line(sock)
            hello = next(line.messages(), None)
            host = hello.get("host") if hello and hello.get("type") == "hello" else None
            with self._lock:
                accepted = host in self.members and host not in self._lines
                if accepted:
                    self._lines[host] = line
                    self._last_seen[host] = time.monotonic()
            if not accepted:
                line.close()
                continue
            sock.settimeout(None)
            if self._started.is_set():
                line.send(type="start")
            self._thread(self._read_loop, host, line)

    def _read_loop(self, host: str, line: _Line) -> None:
        for message in line.messages():
            with self._lock:
                self._last_seen[host] = time.monotonic()
            kind = message.get("type")
            if kind == "start":
                self._started.set()
            elif kind == "done":
                with self._lock:
                    self._done[host] = int(message.get("code", 0))
            elif kind in ("fail", "abort"):
                origin = str(message.get("host") or host)
                text = str(message.get("text") or f"AlgorithmError: host {origin} failed")
                if kind == "fail":  # the coordinator relays a member's failure to the others
                    self._broadcast(type="abort", host=origin, text=text, skip=origin)
                self._events.put(("abort", origin, text))
        if self._closing.is_set():
            return
        with self._lock:
            finished = host in self._done
        if not finished:
            text = f"AlgorithmError: lost contact with host {host}: its train process or instance stopped"
            if self.spec.is_primary:
                self._broadcast(type="abort", host=host, text=text, skip=host)
            self._events.put(("abort", host, text))

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.interval):
            self._broadcast(type="ping")

    def _send(self, to: str, **message: Any) -> None:
        with self._lock:
            line = self._lines.get(to)
        if line is not None:
            line.send(**message)

    def _broadcast(self, skip: str | None = None, **message: Any) -> None:
        with self._lock:
            lines = [(h, line) for h, line in self._lines.items() if h != skip]
        for _, line in lines:
            line.send(**message)


# ---------------------------------------------------------------------------------------------
# The supervisor: what `train` runs on each host of a multi-host job


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
    """The ps-lite processes of this host, started as `python -m gluonseg.training.distributed ROLE`."""

    def __init__(self, spec: ClusterSpec, root_address: str):
        self.spec = spec
        self.root_address = root_address
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        roles = (["scheduler"] if self.spec.is_primary else []) + ["server", "worker"]
        for role in roles:
            env = self.spec.role_environment(role, self.root_address, dict(os.environ))
            self.procs[role] = subprocess.Popen(
                [sys.executable, "-m", "gluonseg.training.distributed", role], env=env, close_fds=True
            )
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


def supervise(env: Environment, resources: ResourceConfig) -> None:
    """Run this host's share of a multi-host job; return on success, raise on failure.

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
    roles = _Roles(spec, primary_address)
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
                    from gluonseg.training.trainer import Stopped

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
# Role processes: `python -m gluonseg.training.distributed scheduler|server|worker`


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


def role_main(argv: list[str]) -> int:
    role = argv[0] if argv else ""
    if role not in ("scheduler", "server", "worker") or os.environ.get("DMLC_ROLE") != role:
        print(f"usage: DMLC_ROLE=ROLE python -m gluonseg.training.distributed ROLE (got {argv})", file=sys.stderr)
        return 2
    die_with_parent()
    if role in ("scheduler", "server"):
        import mxnet  # noqa: F401 - with DMLC_ROLE set, importing MXNet runs the ps-lite loop until shutdown

        return 0
    from gluonseg import train_entry

    code = train_entry.main()
    # Skip interpreter teardown: after a failure, the KVStore's destructor would wait in a barrier for
    # workers that will never come.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Worker side: the KVStore and the collective steps of the training loop


def int_to_limbs(values: Any) -> Any:
    """Non-negative int64 values -> float32 array of 16-bit limbs (shape (LIMBS, n)), exact in float32."""
    import numpy as np

    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size and values.min() < 0:
        raise ValueError("only non-negative integers can be summed exactly")
    mask = (1 << LIMB_BITS) - 1
    return np.stack([(values >> (LIMB_BITS * i)) & mask for i in range(LIMBS)]).astype(np.float32)


def limbs_to_int(limbs: Any) -> Any:
    """Inverse of int_to_limbs, for limbs that were summed (each limb sum is an exact integer < 2**24)."""
    import numpy as np

    limbs = np.rint(np.asarray(limbs, dtype=np.float64)).astype(np.int64).reshape(LIMBS, -1)
    return sum(limbs[i] << (LIMB_BITS * i) for i in range(LIMBS))


def bytes_to_floats(data: bytes) -> Any:
    """Bytes as float32 values below 2**24 (three bytes each): exact in float32, and a sum with zeros
    leaves them unchanged."""
    import numpy as np

    padded = np.frombuffer(data + b"\0" * (-len(data) % 3), dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
    return (padded[:, 0] | padded[:, 1] << 8 | padded[:, 2] << 16).astype(np.float32)


def floats_to_bytes(values: Any, length: int) -> bytes:
    import numpy as np

    v = np.asarray(values, dtype=np.float32).astype(np.uint32)
    return np.stack([v & 255, (v >> 8) & 255, v >> 16], axis=1).astype(np.uint8).tobytes()[:length]


class AgreedStop:
    """A SIGTERM stop that all workers agree on: the signal sets a local flag, and `requested` only turns
    true once a vote (`Cluster.lockstep`, every batch) found some worker's flag set, so every worker stops
    at the same batch and none is left waiting in a collective step."""

    def __init__(self) -> None:
        self.local = False
        self.requested = False
        self._previous = None

    def __enter__(self) -> AgreedStop:
        def handler(signum, frame):
            log.warning("SIGTERM received: all workers stop at the next batch and save a checkpoint")
            self.local = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Cluster:
    """This worker's view of the job: the dist KVStore, its rank, and the collective steps.

    Every method that talks to the KVStore is collective: all workers must call them in the same order.
    """

    def __init__(self, kvstore: Any, resources: ResourceConfig):
        self.kvstore = kvstore
        self.resources = resources
        self.host = resources.current_host
        self.index = host_index(resources)
        self.num_workers = len(resources.hosts)
        self.rank = kvstore.rank
        self._keys: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._next_key = RESERVED_KEY_BASE
        self._blobs = 0
        self._primary_rank: int | None = None

    @classmethod
    def connect(cls, resources: ResourceConfig, num_gpus: int) -> Cluster:
        if not is_worker_process():
            raise AlgorithmError(
                "a multi-host job must be started with `train` on every host, which starts the parameter-server "
                "roles; this process is not one of its workers"
            )
        import mxnet as mx

        kind = "dist_device_sync" if num_gpus > 1 else "dist_sync"
        start = time.perf_counter()
        kvstore = mx.kv.create(kind)
        if kvstore.num_workers != len(resources.hosts):
            raise AlgorithmError(
                f"the parameter server counts {kvstore.num_workers} workers but resourceconfig.json lists "
                f"{len(resources.hosts)} hosts"
            )
        cluster = cls(kvstore, resources)
        log.info(
            "joined the %s KVStore in %.1f s: host %s is worker %d of %d (ps-lite rank %d)%s",
            kind,
            time.perf_counter() - start,
            cluster.host,
            cluster.index,
            cluster.num_workers,
            cluster.rank,
            "; it writes the model and checkpoints" if cluster.is_primary else "",
        )
        return cluster

    @property
    def is_primary(self) -> bool:
        return self.index == 0

    def stop_request(self) -> AgreedStop:
        return AgreedStop()

    # -- primitives
    def _key(self, name: str, shape: tuple[int, ...], initial: Any = None) -> int:
        """A reserved key for `name`, initialised (a collective barrier) on first use: to zeros, or to the
        `initial` array of ps-lite's rank-0 worker (the others' are ignored)."""
        import mxnet as mx

        if name in self._keys:
            key, known = self._keys[name]
            if known != shape:
                raise AlgorithmError(f"internal: KVStore slot {name} changed shape from {known} to {shape}")
            return key
        key = self._next_key
        if key >= RESERVED_KEY_LIMIT:
            raise AlgorithmError("internal: out of reserved KVStore keys")
        self._next_key += 1
        self.kvstore.init(key, mx.nd.zeros(shape) if initial is None else mx.nd.array(initial))
        self._keys[name] = (key, shape)
        return key

    def allreduce(self, name: str, values: Any) -> Any:
        """Sum a float32 array over all workers (every worker gets the same result)."""
        import mxnet as mx
        import numpy as np

        values = np.ascontiguousarray(values, dtype=np.float32)
        key = self._key(name, values.shape)
        out = mx.nd.zeros(values.shape)
        self.kvstore.pushpull(key, mx.nd.array(values), out=out)
        result = out.asnumpy()
        return result

    def allreduce_int(self, name: str, values: Any) -> Any:
        """Exact sum of non-negative int64 values over all workers."""
        import numpy as np

        values = np.asarray(values, dtype=np.int64)
        summed = self.allreduce(name, int_to_limbs(values))
        return limbs_to_int(summed).reshape(values.shape)

    def gather_int(self, name: str, value: int) -> list[int]:
        """Every worker's value, in host order."""
        import numpy as np

        one_hot = np.zeros(self.num_workers, dtype=np.int64)
        one_hot[self.index] = value
        return [int(v) for v in self.allreduce_int(name, one_hot)]

    def any_true(self, name: str, flag: bool) -> bool:
        import numpy as np

        return bool(self.allreduce(name, np.array([1.0 if flag else 0.0]))[0] > 0)

    @property
    def primary_rank(self) -> int:
        """ps-lite's rank of the first host's worker (ps-lite numbers workers in its own order)."""
        if self._primary_rank is None:
            self._primary_rank = self.gather_int("ps-ranks", self.rank)[0]
        return self._primary_rank

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """The first host's bytes, on every worker (the others pass None)."""
        import mxnet as mx
        import numpy as np

        mine = data if self.is_primary and data is not None else b""
        self._blobs += 1
        length = self.gather_int(f"blob-length-{self._blobs}", len(mine))[0]
        if length == 0:
            return b""
        size = -(-length // 3)
        values = bytes_to_floats(mine) if self.is_primary else np.zeros(size, dtype=np.float32)
        if self.primary_rank != 0:  # the others add zeros to the first host's values
            return floats_to_bytes(self.allreduce(f"blob-{self._blobs}", values), length)
        # The KVStore takes a key's initial value from rank 0 alone: one upload, then everyone downloads.
        key = self._key(f"blob-{self._blobs}", values.shape, initial=values)
        out = mx.nd.zeros(values.shape)
        self.kvstore.pull(key, out=out)
        result = out.asnumpy()
        return floats_to_bytes(result, length)

    # -- training-loop steps
    def agree_iterations(self, local_samples: int, batch: int) -> int:
        """Iterations per epoch for every worker: enough for the largest shard (smaller ones cycle), so
        each worker makes the same number of synchronous steps and the schedule counts global steps."""
        counts = self.gather_int("train-samples", local_samples)
        empty = [h for h, c in zip(self.resources.hosts, counts) if c == 0]
        if empty:
            raise ClientError(
                f"host(s) {', '.join(empty)} hold no training images; every host needs at least one "
                "(with ShardedByS3Key, use at least as many files as instances)"
            )
        iters = max(-(-c // batch) for c in counts)
        log.info(
            "training images per host: %s; %d iteration(s) per epoch of %d images per host (%d per iteration "
            "over all hosts)",
            dict(zip(self.resources.hosts, counts)),
            iters,
            batch,
            batch * self.num_workers,
        )
        return iters

    def lockstep(self, batches: Iterable, steps: int, stop: AgreedStop) -> Iterator:
        """Exactly `steps` batches from `batches` (iterated again if it runs out), voting on a stop request
        before each: if any worker was asked to stop, every worker's `stop.requested` turns true together."""
        produced = 0
        while produced < steps:
            empty = True
            for batch in batches:
                empty = False
                stop.requested = self.any_true("stop-vote", stop.local)
                yield batch
                produced += 1
                if produced >= steps or stop.requested:
                    return
            if empty:
                raise AlgorithmError(f"host {self.host}: the training data loader produced no batch")

    def start(self, net: Any, trainer: Any, ctxs: Any, input_shape: tuple[int, ...]) -> None:
        """Give every worker the same parameters before the first gradient is pushed, and check them.

        gluon.Trainer does it inside its first step(): rank 0 sets each KVStore slot to its values and the
        others pull them. But those pulls are queued beside that step's gradient pushes, and a server that
        has every push sums the gradients into the same slot: on a busy machine a pull was answered with the
        gradient sum, and that worker trained a model of its own from then on. So: give deferred parameters
        their shapes and values by shape inference (a forward pass would either move the BatchNorm statistics
        or, in inference mode, leave the weights in oneDNN's layout, which the KVStore cannot send), initialise
        the trainer's KVStore slots now, and wait for every pull before training starts."""
        import mxnet as mx

        params = list(net.collect_params().values())
        if any(p._deferred_init for p in params):  # private names, but MXNet 1.9 is final
            net.infer_shape(mx.nd.zeros(input_shape, ctx=ctxs[0]))
            for p in params:
                p._finish_deferred_init()
        if not trainer._kv_initialized:  # load_states() may have done it
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        mx.nd.waitall()
        self.agree_parameters(net, trainer, ctxs, None)

    def finish_epoch(self, net: Any, trainer: Any, ctxs: Any, epoch: int, loss: float) -> float:
        """After an epoch's steps: average the BatchNorm running statistics (not trained, so not summed by
        the trainer), check that every worker holds the same parameters, and return the mean training loss
        over the workers."""
        self.average_running_stats(net)
        self.agree_parameters(net, trainer, ctxs, epoch)
        import numpy as np

        return float(self.allreduce("train-loss", np.array([loss]))[0] / self.num_workers)

    def agree_parameters(self, net: Any, trainer: Any, ctxs: Any, epoch: int | None) -> bool:
        """Compare every worker's parameter digest with the first host's. The workers apply the same
        optimizer to the same gradient sums, so they should agree; should one not (a rare float difference
        on one host was seen once and never reproduced), it must not train on in a model of its own: every
        worker takes the first host's weights and optimizer state, with a warning. Returns True if they
        already agreed."""
        when = "before training" if epoch is None else f"after epoch {epoch}"
        mine = parameter_digest(net)
        digests = self.gather_digests("parameter-digest", mine)
        if all(d == digests[0] for d in digests):
            log.info("parameter digest %s: %s", when, mine)
            return True
        hosts = self.resources.hosts
        differing = {h: d for h, d in zip(hosts, digests) if d != digests[0]}
        log.warning(
            "%s the parameters of %s differ from %s's (digest %s): every worker continues from "
            "%s's weights and optimizer state",
            when,
            ", ".join(f"{h} (digest {d})" for h, d in differing.items()),
            hosts[0],
            digests[0],
            hosts[0],
        )
        self.share_primary_state(net, trainer, ctxs)
        after = parameter_digest(net)
        if after != digests[0]:
            raise AlgorithmError(
                f"host {self.host}: the parameters still differ from {hosts[0]}'s after loading its weights"
            )
        log.info("parameter digest %s: %s (%s's)", when, after, hosts[0])
        return False

    def gather_digests(self, name: str, digest: str) -> list[str]:
        """Every worker's hex digest, in host order (as 16-bit pieces: integers travel exactly)."""
        import numpy as np

        pieces = len(digest) // 4
        table = np.zeros((self.num_workers, pieces), dtype=np.int64)
        table[self.index] = [int(digest[i * 4 : i * 4 + 4], 16) for i in range(pieces)]
        gathered = self.allreduce_int(name, table)
        return ["".join(f"{int(v):04x}" for v in row) for row in gathered]

    def share_primary_state(self, net: Any, trainer: Any, ctxs: Any) -> None:
        """Load the first host's current weights and optimizer state on every worker."""
        from gluonseg.training.checkpoint import load_trainer_states

        with tempfile.TemporaryDirectory(prefix="gluonseg-share-") as tmp:
            weights, states = Path(tmp) / "weights.params", Path(tmp) / "trainer.states"
            if self.is_primary:
                net.save_parameters(str(weights))
                trainer.save_states(str(states))
            weights_data = self.broadcast_bytes(weights.read_bytes() if self.is_primary else None)
            states_data = self.broadcast_bytes(states.read_bytes() if self.is_primary else None)
            if not self.is_primary:
                weights.write_bytes(weights_data)
                states.write_bytes(states_data)
                net.load_parameters(str(weights), ctx=ctxs)
                load_trainer_states(trainer, states)

    def average_running_stats(self, net: Any) -> None:
        import mxnet as mx

        params = [(name, p) for name, p in sorted(net.collect_params().items()) if p.grad_req == "null"]
        if not params:
            return
        keys, outs, values = [], [], []
        for name, p in params:
            value = p.list_data()[0]
            keys.append(self._key(f"aux:{name}", tuple(value.shape)))
            values.append(value.astype("float32"))
            outs.append(mx.nd.zeros(value.shape))
        self.kvstore.pushpull(keys, values, out=outs)
        for (_, p), out in zip(params, outs):
            p.set_data((out / self.num_workers).astype(p.dtype))
        mx.nd.waitall()

    def sum_confusion(self, cm: Any) -> Any:
        """The confusion matrix over every worker's validation share (exact integer sums)."""
        from gluonseg.metrics import ConfusionMatrix

        total = ConfusionMatrix(cm.num_classes, cm.ignore_index)
        total.matrix[:] = self.allreduce_int("confusion", cm.matrix)
        return total

    def resume(self, ckpt_dir: Path, net: Any, trainer: Any, ctxs: Any) -> tuple[Path | None, dict[str, Any] | None]:
        """Load the first host's newest checkpoint on every worker (found there, sent through the KVStore),
        so all workers resume from the same epoch, weights and optimizer state. Returns (folder, state)."""
        from gluonseg.training.checkpoint import REQUIRED, find_checkpoint, load_checkpoint

        found = find_checkpoint(ckpt_dir) if self.is_primary else None
        name = self.broadcast_bytes(found.name.encode() if found is not None else None).decode()
        if not name:
            return None, None
        start = time.perf_counter()
        blobs = {}
        for filename in REQUIRED:  # the best weights stay with the first host, which writes the model
            data = (found / filename).read_bytes() if self.is_primary else None
            blobs[filename] = self.broadcast_bytes(data)
        log.info(
            "checkpoint %s of %s (%.0f MB) shared with every worker in %.1f s",
            name,
            self.resources.hosts[0],
            sum(len(b) for b in blobs.values()) / 1e6,
            time.perf_counter() - start,
        )
        if self.is_primary:
            return found, load_checkpoint(found, net, trainer, ctxs)
        with tempfile.TemporaryDirectory(prefix="gluonseg-ckpt-") as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            for filename, data in blobs.items():
                (folder / filename).write_bytes(data)
            saved = load_checkpoint(folder, net, trainer, ctxs)
        return Path(self.resources.hosts[0]) / name, saved  # for the log: the first host's folder

    def close(self) -> None:
        """Release the KVStore now, whoever still holds it: its destructor waits for every worker (so the
        first host has written the model), and the first worker tells the servers and scheduler to stop."""
        from mxnet.base import _LIB, check_call

        kvstore, self.kvstore = self.kvstore, None
        if kvstore is not None:
            check_call(_LIB.MXKVStoreFree(kvstore.handle))
            kvstore.handle = None  # a later __del__ frees NULL, which is a no-op


def parameter_digest(net: Any) -> str:
    """sha256 over every parameter's structural name (as in saved .params files, free of the per-process
    block counters) and values (first device's copy), sorted by name."""
    digest = hashlib.sha256()
    for name, p in sorted(net._collect_params_with_prefix().items()):
        digest.update(name.encode())
        digest.update(p.list_data()[0].asnumpy().tobytes())
    return digest.hexdigest()[:32]


if __name__ == "__main__":
    from gluonseg.training import distributed as _module  # the importable copy, not this __main__ one

    sys.exit(_module.role_main(sys.argv[1:]))
