"""Load on the real scoring server over loopback: errors, latency, throughput and worker memory.

Starts `serve` (gunicorn + Flask, the same command SageMaker runs) through tests.server_process.Server,
warms it up, then sends a bounded number of requests (1,000 by default) at each concurrency level
(4, then 8), each level also bounded in time. Reported per level: errors (any answer but a 200 PNG, or
a failed connection), latency p50/p99 as the client sees it, throughput. Reported per worker: RSS after
warm-up and at the end (/proc/<pid>/status VmRSS); the target is zero errors and RSS growth <= 10%.
The worker pids must not change during the run (a worker that died and was replaced is a failure).

Without --model-dir a small model is built: FCN on ResNet-50, 4 classes, crop 64, random weights
(the speed of a forward pass does not depend on the weights' values).

Run: .venv/bin/python -m benchmarks.load [--model-dir M] [--requests 1000] [--concurrency 4 8]
     [--time-limit 300] [--workers N] [--image 160x120] [--no-record]
The client threads run on the same machine as the server, so on a small machine they take CPU from it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks.report import write_section
from gluonseg.util import available_cpus as cpu_count
from tests.server_process import Server

MAX_RSS_GROWTH = 0.10


@dataclass
class Level:
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_time: bool = False

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)


def build_small_model(folder: Path, crop: int = 64, classes: int = 4) -> Path:
    """A model folder as training writes one (FCN, ResNet-50, random weights)."""
    import mxnet as mx

    from gluonseg.artifacts import BEST_PARAMS, write_hyperparams
    from gluonseg.hyperparameters import parse
    from gluonseg.models import build_network

    folder.mkdir(parents=True, exist_ok=True)
    mx.random.seed(0)
    net = build_network(
        "fcn", "resnet-50", num_classes=classes, crop_size=crop, base_size=crop, pretrained_backbone=False, aux=True
    )
    net(mx.nd.zeros((1, 3, crop, crop)))  # fixes every deferred shape before saving
    net.save_parameters(str(folder / BEST_PARAMS))
    hp = parse(
        {
            "num_classes": str(classes),
            "num_training_samples": "1",
            "crop_size": str(crop),
            "base_size": str(crop),
            "algorithm": "fcn",
            "use_pretrained_model": "False",
        }
    )
    write_hyperparams(folder, hp, meta={})
    return folder


def jpeg_bodies(width: int, height: int, count: int = 16) -> list[bytes]:
    bodies = []
    for seed in range(count):
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        bodies.append(buf.getvalue())
    return bodies


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def one_request(url: str, body: bytes) -> tuple[float, str | None]:
    """(seconds, None) for a 200 PNG; (seconds, what went wrong) otherwise."""
    start = time.perf_counter()
    try:
        r = requests.post(url, data=body, headers={"Content-Type": "image/jpeg", "Accept": "image/png"}, timeout=120)
        problem = None if r.status_code == 200 and r.content[:4] == b"\x89PNG" else f"HTTP {r.status_code}"
    except requests.RequestException as exc:
        problem = type(exc).__name__
    return time.perf_counter() - start, problem


def run_level(url: str, bodies: list[bytes], concurrency: int, total: int, time_limit: float) -> Level:
    """`total` requests from `concurrency` threads, each sending one after another; stops early at `time_limit`."""
    level = Level(concurrency)
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + time_limit

    def client() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= total:
                    return
                if time.monotonic() > deadline:
                    level.stopped_by_time = True
                    return
                index = issued
                issued += 1
            seconds, problem = one_request(url, bodies[index % len(bodies)])
            with lock:
                if problem is None:
                    level.latencies.append(seconds)
                else:
                    level.errors.append(problem)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    level.seconds = time.perf_counter() - start
    return level


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(args, model_desc: str, workers: int, levels: list[Level], rss: dict[int, tuple[int, int]]) -> str:
    lines = [
        f"Model: {model_desc}. Server: `serve` (gunicorn sync workers, Flask) on loopback, {workers} worker(s) "
        f"x {max(1, cpu_count() // workers)} OpenMP thread(s). Requests: {args.image} JPEG "
        f"(16 distinct), `Accept: image/png`; {args.warmup} warm-up requests first. Client: Python threads "
        "(requests) on the same machine, one request at a time each.",
        "",
        "| concurrency | requests | errors | p50 ms | p99 ms | mean ms | throughput req/s | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level in levels:
        note = " (time limit)" if level.stopped_by_time else ""
        lines.append(
            f"| {level.concurrency} | {level.requests}{note} | {len(level.errors)} | "
            f"{percentile(level.latencies, 50) * 1000:.0f} | {percentile(level.latencies, 99) * 1000:.0f} | "
            f"{statistics.fmean(level.latencies) * 1000 if level.latencies else float('nan'):.0f} | "
            f"{level.requests / level.seconds:.1f} | {level.seconds:.1f} |"
        )
    lines += ["", "| worker pid | RSS after warm-up MB | RSS at the end MB | growth |", "| --- | --- | --- | --- |"]
    for pid, (warm, end) in rss.items():
        lines.append(f"| {pid} | {warm / 2**20:.0f} | {end / 2**20:.0f} | {(end / warm - 1) * 100:+.1f}% |")
    return "\n".join(lines)


def verdict(levels: list[Level], rss: dict[int, tuple[int, int]], pids_same: bool, wanted: int) -> list[str]:
    """The targets that were missed (empty when all are met)."""
    missed = []
    for level in levels:
        if level.errors:
            kinds = sorted(set(level.errors))
            missed.append(f"{len(level.errors)} error(s) at concurrency {level.concurrency}: {', '.join(kinds)}")
        if level.requests < wanted:
            missed.append(f"only {level.requests} of {wanted} requests at concurrency {level.concurrency} in time")
    for pid, (warm, end) in rss.items():
        if end > warm * (1 + MAX_RSS_GROWTH):
            missed.append(f"worker {pid} RSS grew {(end / warm - 1) * 100:.1f}% (> {MAX_RSS_GROWTH:.0%})")
    if not pids_same:
        missed.append("a worker died and was replaced during the run")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a model folder; default: build a small random-weight FCN")
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--time-limit", type=float, default=300, help="seconds per level at most")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: one per core)")
    parser.add_argument("--image", default="160x120", help="WIDTHxHEIGHT of the request pictures")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--no-record", action="store_true", help="print the table but leave BENCHMARKS.md alone")
    args = parser.parse_args()

    width, height = (int(v) for v in args.image.lower().split("x"))
    workers = args.workers or cpu_count()
    with tempfile.TemporaryDirectory(prefix="gluonseg-load-") as tmp:
        if args.model_dir:
            model_dir, model_desc = args.model_dir, f"`{args.model_dir}`"
        else:
            model_dir = build_small_model(Path(tmp) / "model")
            model_desc = "FCN on ResNet-50, 4 classes, crop 64, random weights (built by the script)"
        server = Server(model_dir, workers=workers).start(timeout=600)
        url = server.url + "/invocations"
        try:
            pids = sorted(server.worker_pids())
            bodies = jpeg_bodies(width, height)
            warm = run_level(url, bodies, max(args.concurrency), args.warmup, args.time_limit)
            if warm.errors:
                raise SystemExit(f"warm-up failed: {warm.errors[:5]}\n{server.output()[-3000:]}")
            rss_warm = {pid: rss_bytes(pid) for pid in pids}
            levels = []
            for concurrency in args.concurrency:
                levels.append(run_level(url, bodies, concurrency, args.requests, args.time_limit))
                print(f"concurrency {concurrency}: {levels[-1].requests} requests, {len(levels[-1].errors)} errors")
            pids_after = sorted(server.worker_pids())
            rss = {pid: (rss_warm[pid], rss_bytes(pid)) for pid in pids if pid in pids_after}
        finally:
            server.stop()

    text = report(args, model_desc, workers, levels, rss)
    missed = verdict(levels, rss, pids_after == pids, args.requests)
    targets = f"Targets: zero errors, every request done within {args.time_limit:.0f} s per level, worker RSS growth "
    targets += f"<= {MAX_RSS_GROWTH:.0%}: " + ("all met." if not missed else "MISSED: " + "; ".join(missed) + ".")
    text += "\n\n" + targets
    print(text)
    if not args.no_record:
        write_section("load", text)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
