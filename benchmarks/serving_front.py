"""gunicorn alone against nginx + gunicorn, side by side in one run: throughput, latency and /ping under load.

The same `serve` command, the same model and workers, with and without the nginx front
(GLUONSEG_NO_PROXY=true is gunicorn alone on the port, as before the front existed). For each
concurrency level (1, 2, 4, 8, 16 clients posting the 800x600 JPEG back to back for --seconds), a
pinger asks GET /ping every 0.5 s with SageMaker's 2 s timeout. Reported per level: requests/s
(answers 200), p50/p99 latency of those, 503s (a full queue: the client waits Retry-After and tries
again, as SageMaker clients do with a throttled endpoint), /ping p99 and pings that failed (no answer
within 2 s, or not 200).

Model: FCN on ResNet-50, 21 classes, crop 240, random weights (a forward pass costs the same whatever
the weights), native scale, FP32: the defaults. Workers x threads = cores.

Run: .venv/bin/python -m benchmarks.serving_front [--seconds 60] [--levels 1 2 4 8 16] [--no-record]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks.load import build_small_model
from benchmarks.report import write_section
from gluonseg.util import available_cpus as cpu_count
from tests.server_process import Server

PING_TIMEOUT_S = 2.0
HEADERS = {"Content-Type": "image/jpeg", "Accept": "image/png"}


def photo(width: int = 800, height: int = 600, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // width], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    busy: int = 0  # 503 answers
    errors: list[str] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)  # seconds, answered 200
    ping_failures: int = 0
    seconds: float = 0.0

    def row(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        pings = sorted(self.pings)
        return {
            "clients": self.clients,
            "rps": len(lat) / self.seconds,
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat else float("nan"),
            "busy": self.busy,
            "errors": len(self.errors),
            "ping_p99": float(np.percentile(pings, 99)) if pings else float("nan"),
            "ping_failures": self.ping_failures,
            "pings": len(pings) + self.ping_failures,
        }


def run_level(url: str, body: bytes, clients: int, seconds: float) -> Level:
    level = Level(clients)
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = session.post(url + "/invocations", data=body, headers=HEADERS, timeout=120)
            except requests.RequestException as exc:
                with lock:
                    level.errors.append(type(exc).__name__)
                continue
            with lock:
                if r.status_code == 200:
                    level.latencies.append(time.monotonic() - t0)
                elif r.status_code == 503:
                    level.busy += 1
                else:
                    level.errors.append(str(r.status_code))
            if r.status_code == 503:
                time.sleep(float(r.headers.get("Retry-After", "1")))

    def pinger() -> None:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                ok = requests.get(url + "/ping", timeout=PING_TIMEOUT_S).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                if ok:
                    level.pings.append(time.monotonic() - t0)
                else:
                    level.ping_failures += 1
            time.sleep(0.5)

    threads = [threading.Thread(target=client) for _ in range(clients)] + [threading.Thread(target=pinger)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.monotonic() - start
    return level


def measure(model: Path, proxy: bool, body: bytes, levels: list[int], seconds: float) -> list[dict]:
    workers = cpu_count()
    server = Server(model, workers=workers, GLUONSEG_NO_PROXY="false" if proxy else "true").start(timeout=600)
    try:
        run_level(server.url, body, workers, 0)  # nothing timed: each worker compiles the picture's shape
        for _ in range(2 * workers):
            requests.post(server.url + "/invocations", data=body, headers=HEADERS, timeout=120)
        rows = []
        for clients in levels:
            rows.append(run_level(server.url, body, clients, seconds).row())
            print(("nginx+gunicorn" if proxy else "gunicorn alone"), rows[-1], flush=True)
        return rows
    finally:
        server.stop()


def render(alone: list[dict], front: list[dict], seconds: float) -> str:
    lines = [
        f"FCN-ResNet-50, 21 classes, native scale, FP32; one 800x600 JPEG; {cpu_count()} workers x 1 thread; "
        f"{seconds:.0f} s per level; a pinger every 0.5 s with a 2 s timeout.",
        "",
        "| clients | setup | req/s | p50 s | p99 s | 503 (queue full) | other errors | /ping p99 s | pings failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ping(value: float) -> str:
        return "none answered" if value != value else f"{value:.3f}"  # NaN: every ping failed

    for a, f in zip(alone, front, strict=True):
        for name, row in (("gunicorn alone", a), ("nginx + gunicorn", f)):
            lines.append(
                f"| {row['clients']} | {name} | {row['rps']:.2f} | {row['p50']:.2f} | {row['p99']:.2f} | "
                f"{row['busy']} | {row['errors']} | {ping(row['ping_p99'])} | "
                f"{row['ping_failures']} of {row['pings']} |"
            )
    best = max(r["rps"] for r in front)
    at16 = front[-1]
    lines += [
        "",
        f"nginx + gunicorn at {at16['clients']} clients: {at16['rps']:.2f} req/s = {at16['rps'] / best:.2f}x the best "
        f"level ({best:.2f}); target >= 0.9x. /ping p99 at every level: "
        f"{max(r['ping_p99'] for r in front):.3f} s, {sum(r['ping_failures'] for r in front)} failed "
        f"(target < 2 s, none). gunicorn alone: {sum(r['ping_failures'] for r in alone)} pings failed.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_small_model(Path(tmp) / "model", crop=240, classes=21)
        body = photo()
        alone = measure(model, False, body, args.levels, args.seconds)
        front = measure(model, True, body, args.levels, args.seconds)
    text = render(alone, front, args.seconds)
    print(text)
    if not args.no_record:
        write_section("serving front", text)


if __name__ == "__main__":
    main()
