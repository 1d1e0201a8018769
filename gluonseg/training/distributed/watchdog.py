"""The watchdog network between the hosts' supervisors of a multi-host job.

The first host's supervisor is the coordinator, the others are members; they exchange JSON lines over TCP
(hello, start, ping, fail, done, abort). ps-lite waits forever for a peer that died, so this is how a failed,
vanished or silent host ends the job on every host.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from gluonseg.training.distributed.spec import JOIN_TIMEOUT_ENV, PEER_TIMEOUT_ENV, ClusterSpec


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
