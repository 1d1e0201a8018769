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
import tempfile
from pathlib import Path

import requests

from benchmarks.common.load import HEADERS, Load, run_load
from benchmarks.common.models import random_model
from benchmarks.common.pictures import photo_jpeg
from benchmarks.common.report import publish
from benchmarks.common.server import Server
from benchmarks.common.tables import median, percentile
from gluonseg.util import available_cpus


def row(level: Load) -> dict[str, float]:
    return {
        "clients": level.clients,
        "rps": level.rps,
        "p50": median(level.latencies),
        "p99": percentile(level.latencies, 99),
        "busy": level.busy,
        "errors": len(level.errors),
        "ping_p99": percentile(level.pings, 99),
        "ping_failures": level.ping_failures,
        "pings": len(level.pings) + level.ping_failures,
    }


def run_level(url: str, body: bytes, clients: int, seconds: float) -> Load:
    """`clients` posting back to back for `seconds` (a 503 waits Retry-After), and a pinger every 0.5 s."""
    return run_load(url, [body], clients, seconds=seconds, retry_busy=True, ping_every=0.5)


def measure(model: Path, proxy: bool, body: bytes, levels: list[int], seconds: float) -> list[dict]:
    workers = available_cpus()
    server = Server(model, workers=workers, GLUONSEG_NO_PROXY="false" if proxy else "true").start(timeout=600)
    try:
        for _ in range(2 * workers):  # nothing timed: each worker compiles the picture's shape
            requests.post(server.url + "/invocations", data=body, headers=HEADERS, timeout=120)
        rows = []
        for clients in levels:
            rows.append(row(run_level(server.url, body, clients, seconds)))
            print(("nginx+gunicorn" if proxy else "gunicorn alone"), rows[-1], flush=True)
        return rows
    finally:
        server.stop()


def render(alone: list[dict], front: list[dict], seconds: float) -> str:
    lines = [
        f"FCN-ResNet-50, 21 classes, native scale, FP32; one 800x600 JPEG; {available_cpus()} workers x 1 thread; "
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
        model = random_model(Path(tmp) / "model", classes=21, crop=240)
        body = photo_jpeg()
        alone = measure(model, False, body, args.levels, args.seconds)
        front = measure(model, True, body, args.levels, args.seconds)
    publish("serving front", render(alone, front, args.seconds), not args.no_record)


if __name__ == "__main__":
    main()
