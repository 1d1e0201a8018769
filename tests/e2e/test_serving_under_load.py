"""The real server (nginx + gunicorn) under the traffic a real endpoint sees, over loopback HTTP.

Slow senders, busy workers, a full queue, bodies over the limit, malformed requests, a request past the
timeout, SIGTERM mid-request, a dying child process, and worker memory over pictures of varied sizes.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from benchmarks.common.server import Server

PING_TIMEOUT_S = 2.0  # SageMaker's per-ping limit


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth gradients and noise, as a camera makes): compresses like one."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width)), (y * 255 // max(1, height)), ((x + y) * 127 // max(1, width))], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def post(server: Server, body: bytes, timeout: float = 120, **headers: str) -> requests.Response:
    return requests.post(
        server.url + "/invocations", data=body, headers={"Content-Type": "image/jpeg", **headers}, timeout=timeout
    )


def raw_exchange(port: int, data: bytes, wait: float = 10) -> bytes:
    """Send raw bytes, read until the server closes (or `wait` passes)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.settimeout(wait)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def read_one_response(s: socket.socket) -> bytes:
    """One whole response (head + Content-Length body), without waiting for the server to close."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def json_body(raw: bytes) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return json.loads(body)


class Pinger(threading.Thread):
    """GET /ping every 0.5 s with SageMaker's 2 s timeout until stopped; records (status, seconds)."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.results, self.stop = server, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                status = requests.get(self.server.url + "/ping", timeout=PING_TIMEOUT_S).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.results.append((status, time.monotonic() - start))
            self.stop.wait(0.5)

    def finish(self) -> list:
        self.stop.set()
        self.join(10)
        return self.results


@pytest.fixture(scope="module")
def front(trained_model_dir):
    srv = Server(trained_model_dir, workers=2, GLUONSEG_CLIENT_BODY_TIMEOUT="3", GLUONSEG_CLIENT_HEADER_TIMEOUT="3")
    srv.start()
    yield srv
    srv.stop()


def test_slow_senders_do_not_starve_ping_and_end_at_the_body_timeout(front):
    trickle_until = time.monotonic() + 15
    outcomes: dict[int, tuple[bytes, float]] = {}

    def trickler(index: int) -> None:
        with socket.create_connection(("127.0.0.1", front.port)) as s:
            s.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
            )
            while time.monotonic() < trickle_until:
                s.sendall(b"x")  # one byte every 0.5 s: each read resets nginx's 3 s body timer
                time.sleep(0.5)
            stalled = time.monotonic()  # now silent: the body timeout must end the request
            s.settimeout(30)
            answer = b""
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
            outcomes[index] = (answer, time.monotonic() - stalled)

    threads = [threading.Thread(target=trickler, args=(i,)) for i in range(6)]
    pinger = Pinger(front)
    pinger.start()
    for t in threads:
        t.start()
    normal = []
    while time.monotonic() < trickle_until:
        normal.append(post(front, jpeg(160, 120), timeout=30).status_code)
        time.sleep(0.5)
    for t in threads:
        t.join(60)
    pings = pinger.finish()
    assert len(pings) >= 25 and all(status == 200 and seconds < PING_TIMEOUT_S for status, seconds in pings), pings
    assert normal and set(normal) == {200}, normal
    assert len(outcomes) == 6
    for answer, seconds in outcomes.values():
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 2 <= seconds <= 10, seconds  # the 3 s body timeout, not the client's 30 s
    assert post(front, jpeg(160, 120)).status_code == 200


def test_header_trickle_is_cut_at_the_header_timeout(front):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", front.port)) as s:
        s.settimeout(30)
        answer = b""
        try:
            for _ in range(40):
                s.sendall(b"X")  # a request line that never ends
                time.sleep(0.25)
            while chunk := s.recv(65536):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - start < 10.5  # cut at 3 s (nginx's header timer does not reset per byte)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_busy_workers_do_not_delay_ping(front):
    """3 clients posting ~1 MP photos back to back for 30 s at 2 workers: pings all 200 within 2 s."""
    photos = [jpeg(1152, 864, seed=i) for i in range(3)]
    stop_at = time.monotonic() + 30
    statuses: list[int] = []

    def client(body: bytes) -> None:
        while time.monotonic() < stop_at:
            statuses.append(post(front, body, timeout=60).status_code)

    pinger = Pinger(front)
    pinger.start()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(client, photos))
    pings = pinger.finish()
    assert len(pings) >= 40 and all(status == 200 and seconds < PING_TIMEOUT_S for status, seconds in pings), pings
    assert len(statuses) >= 3 and set(statuses) == {200}, statuses  # every client was answered, all 200


def test_nginx_errors_are_json_and_the_version_is_not_advertised(front):
    answer = raw_exchange(front.port, b"GARBAGE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and "error" in json_body(answer)
    answer = raw_exchange(front.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414") and "error" in json_body(answer)
    answer = raw_exchange(front.port, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and "error" in json_body(answer)
    r = requests.get(front.url + "/ping", timeout=2)
    assert r.headers["Server"] == "nginx"
    r = requests.get(front.url + "/no-such-route", timeout=5)
    assert r.status_code == 404 and "error" in r.json()


def test_body_over_the_limit_is_413_json_without_reading_it(front):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", front.port)) as s:
        s.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 7340032\r\n\r\n"
        )
        s.sendall(b"\xff" * 65536)  # 64 KB of the announced 7 MB; the rest never comes
        s.settimeout(5)
        answer = read_one_response(s)
    assert time.monotonic() - start < 5
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in json_body(answer)["error"]
    # Chunked (no Content-Length): refused once the bytes read pass the limit.
    r = requests.post(
        front.url + "/invocations",
        data=(b"\xff" * 1_048_576 for _ in range(7)),
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert r.status_code == 413 and "error" in r.json()


def test_full_queue_is_503_with_retry_after_at_once(trained_model_dir):
    srv = Server(trained_model_dir, workers=1, GLUONSEG_MAX_QUEUE="1").start()
    try:
        photo = jpeg(1152, 864, seed=3)
        with ThreadPoolExecutor(2) as pool:
            first = [pool.submit(post, srv, photo) for _ in range(2)]  # one running, one waiting
            time.sleep(1.0)
            start = time.monotonic()
            r = post(srv, jpeg(160, 120), timeout=10)
            elapsed = time.monotonic() - start
            assert r.status_code == 503 and elapsed < 1.0, (r.status_code, elapsed)
            assert r.headers["Retry-After"] == "1" and "GLUONSEG_MAX_QUEUE" in r.json()["error"]
            assert [f.result().status_code for f in first] == [200, 200]
        assert post(srv, jpeg(160, 120)).status_code == 200  # the slots come back
    finally:
        srv.stop()


def test_request_over_the_timeout_is_504_json_and_the_worker_stays(trained_model_dir):
    srv = Server(trained_model_dir, workers=1, SAGEMAKER_MODEL_SERVER_TIMEOUT="1").start()
    try:
        workers = srv.worker_pids()
        photo = jpeg(1152, 864, seed=4)  # a few seconds of network at one worker
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda body: post(srv, body, timeout=30), [photo, photo]))
        for r in answers:
            assert r.status_code == 504 and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in r.json()["error"]
        # The second request reached the worker after its caller had gone: skipped, not computed.
        deadline = time.monotonic() + 30
        while "skipped a request that waited" not in srv.output() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "skipped a request that waited" in srv.output()
        assert requests.get(srv.url + "/ping", timeout=2).status_code == 200
        assert post(srv, jpeg(64, 48), timeout=30).status_code == 200
        assert srv.worker_pids() == workers  # never killed nor replaced
    finally:
        srv.stop()


def test_sigterm_stops_accepting_finishes_the_request_and_exits_0(trained_model_dir):
    srv = Server(trained_model_dir, workers=1).start()
    result = {}

    def slow_request() -> None:
        result["r"] = post(srv, jpeg(1600, 1200, seed=5), Accept="application/x-protobuf")

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(1.0)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(srv.url + "/ping", timeout=2)  # no new connections once stopping
    t.join(120)
    assert srv.stop() == 0
    assert result["r"].status_code == 200 and len(result["r"].content) > 1600 * 1200 * 4


@pytest.mark.parametrize("victim", ["nginx", "gunicorn"])
def test_if_either_process_dies_serve_stops_the_other_and_exits_non_zero(trained_model_dir, victim):
    srv = Server(trained_model_dir, workers=1).start()
    try:
        nginx, gunicorn = srv.nginx_pid(), srv.master_pid()
        os.kill(nginx if victim == "nginx" else gunicorn, signal.SIGKILL)
        srv.proc.wait(60)
        assert srv.proc.returncode not in (0, None)
        time.sleep(1)
        for pid in (nginx, gunicorn):
            assert not _alive(pid), f"{pid} still running after {victim} died"
            assert not _live_in_group(pid), f"processes of {pid}'s group (its workers) outlived it"
        assert f"{victim} exited" in srv.output()
    finally:
        srv.stop()


def _live_in_group(pgid: int) -> list[int]:
    """Processes (zombies aside) whose process group is `pgid`."""
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(stat))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    return status != "Z"


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_worker_memory_stays_flat_over_pictures_of_varied_sizes(trained_model_dir):
    """100 pictures of 300-1000 px a side to one worker: RSS after the last within 10% of after the 20th.

    A worker's RSS at a given moment depends on the two shapes whose compiled graphs it holds, so the
    20th and the 100th requests (and the ones before them) use the same, largest sizes: the comparison
    is like for like, and anything left behind by the 78 random pictures in between shows as growth.
    """
    srv = Server(trained_model_dir, workers=1).start()
    try:
        (worker,) = srv.worker_pids()
        rng = random.Random(11)
        sizes = [(rng.randint(300, 1000), rng.randint(300, 1000)) for _ in range(100)]
        sizes[18] = sizes[98] = (1000, 1000)
        sizes[19] = sizes[99] = (1000, 992)
        rss = []
        for i, (w, h) in enumerate(sizes):
            r = post(srv, jpeg(w, h, seed=i))
            assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (w, h)
            rss.append(rss_mb(worker))
        assert srv.worker_pids() == [worker]
        growth = rss[99] / rss[19] - 1
        assert growth <= 0.10, f"RSS after request 20: {rss[19]:.0f} MB, after 100: {rss[99]:.0f} MB; {rss}"
        assert max(rss[20:]) <= 1.10 * max(rss[:20])  # no picture in between pushed the peak up either
    finally:
        srv.stop()


def test_no_proxy_serves_with_gunicorn_alone_and_warns(trained_model_dir):
    srv = Server(trained_model_dir, workers=1, GLUONSEG_NO_PROXY="true").start()
    try:
        r = post(srv, jpeg(96, 64))
        assert r.status_code == 200 and "nginx" not in r.headers.get("Server", "")
        assert "serving WITHOUT nginx" in srv.output() and "WARNING" in srv.output()
        assert not (srv.runtime / "nginx.conf").exists()
    finally:
        assert srv.stop() == 0


def test_a_runtime_folder_of_its_own_is_removed_at_exit(trained_model_dir):
    srv = Server(trained_model_dir, workers=1, GLUONSEG_RUNTIME_DIR="").start()  # empty: unset
    try:
        runtime = Path(re.search(r"gunicorn on (\S+)/gunicorn\.sock", srv.output()).group(1))
        assert (runtime / "nginx.conf").exists() and (runtime / "ready").exists()
    finally:
        assert srv.stop() == 0
    assert not runtime.exists()
