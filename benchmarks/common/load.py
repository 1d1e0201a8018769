"""The load generator: client threads posting pictures to /invocations back to back, and what they saw.

One loop serves every benchmark; they differ only in when to stop and what a failure does:
- `seconds` / `min_requests` / `max_requests`: stop issuing once `seconds` have passed and `min_requests`
  were sent, or once `max_requests` were sent;
- `time_limit`: stop issuing at this many seconds whatever was sent (`stopped_by_time` says it happened);
- `stop_on_error`: the first failure stops every client and the run raises (a measurement that must be clean);
- `retry_busy`: a 503 (a full queue) is counted apart and the client waits Retry-After, as SageMaker's
  clients do with a throttled endpoint;
- `ping_every`: a pinger asks GET /ping that often, with SageMaker's 2 s timeout, while `seconds` last.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

HEADERS = {"Content-Type": "image/jpeg", "Accept": "image/png"}
PING_TIMEOUT_S = 2.0
PNG_SIGNATURE = b"\x89PNG"


@dataclass
class Load:
    """What one load run saw."""

    clients: int
    latencies: list[float] = field(default_factory=list)  # seconds, answers that were a 200 PNG
    errors: list[str] = field(default_factory=list)  # one per failed request: "HTTP <status>" or the exception
    failure: str = ""  # the first failure: its status and the start of its body, or the exception
    busy: int = 0  # 503 answers, when retried
    pings: list[float] = field(default_factory=list)  # seconds, pings answered 200
    ping_failures: int = 0
    seconds: float = 0.0  # wall time of the run
    stopped_by_time: bool = False
    last_body: bytes = b""

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def run_load(
    url: str,
    bodies: list[bytes],
    clients: int,
    *,
    seconds: float = 0.0,
    min_requests: int = 0,
    max_requests: int | None = None,
    time_limit: float | None = None,
    timeout: float = 120.0,
    keep_alive: bool = True,
    retry_busy: bool = False,
    stop_on_error: bool = False,
    ping_every: float | None = None,
) -> Load:
    """`clients` threads posting `bodies` (in turn) to `url`/invocations, each one request at a time."""
    load = Load(clients)
    lock = threading.Lock()
    issued = 0
    start = time.perf_counter()

    def next_index() -> int | None:
        nonlocal issued
        with lock:
            elapsed = time.perf_counter() - start
            if (max_requests is not None and issued >= max_requests) or (elapsed >= seconds and issued >= min_requests):
                return None
            if time_limit is not None and elapsed > time_limit:
                load.stopped_by_time = True
                return None
            if stop_on_error and load.errors:
                return None
            issued += 1
            return issued - 1

    def failed(kind: str, detail: str) -> None:
        load.errors.append(kind)
        load.failure = load.failure or detail

    def client() -> None:
        post = requests.Session().post if keep_alive else requests.post
        while (index := next_index()) is not None:
            t0 = time.perf_counter()
            try:
                r = post(url + "/invocations", data=bodies[index % len(bodies)], headers=HEADERS, timeout=timeout)
            except requests.RequestException as exc:
                with lock:
                    failed(type(exc).__name__, type(exc).__name__)
                continue
            latency = time.perf_counter() - t0
            busy = retry_busy and r.status_code == 503
            with lock:
                if r.status_code == 200 and r.content[:4] == PNG_SIGNATURE:
                    load.latencies.append(latency)
                    load.last_body = r.content
                elif busy:
                    load.busy += 1
                else:
                    failed(f"HTTP {r.status_code}", f"{r.status_code}: {r.text[:300]}")
            if busy:
                time.sleep(float(r.headers.get("Retry-After", "1")))

    def pinger() -> None:
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            try:
                ok = requests.get(url + "/ping", timeout=PING_TIMEOUT_S).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    load.pings.append(time.perf_counter() - t0)
                else:
                    load.ping_failures += 1
            time.sleep(ping_every)

    with ThreadPoolExecutor(clients + 1) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        if ping_every is not None:
            futures.append(pool.submit(pinger))
        for future in futures:
            future.result()
    load.seconds = time.perf_counter() - start
    if stop_on_error and load.failure:
        raise RuntimeError(f"request failed: {load.failure}")
    return load
