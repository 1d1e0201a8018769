"""The serving variants through a real server: throughput and latency under load, and worker memory."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common.load import Load, run_load
from benchmarks.common.procfs import status_bytes
from benchmarks.common.server import Server
from benchmarks.common.tables import median, percentile
from benchmarks.serving_baseline import start_baseline
from benchmarks.serving_variants import PRECISION, SCALE
from gluonseg.util import available_cpus


def _load(
    url: str, jpeg: bytes, clients: int, seconds: float, min_requests: int, max_requests: int | None = None
) -> Load:
    """`clients` posting `jpeg` back to back until `seconds` passed and `min_requests` were sent; any failure raises."""
    return run_load(
        url,
        [jpeg],
        clients,
        seconds=seconds,
        min_requests=min_requests,
        max_requests=max_requests,
        timeout=900,
        stop_on_error=True,
    )


def _memory(pid: int, key: str) -> int:
    return status_bytes(pid, key) or 0


def serve_and_load(key: str, model_dir: Path, jpeg: bytes, args, log_dir: Path) -> dict[str, Any]:
    """Start the server for one variant, warm it, load it with 1 then 2 clients, read worker memory."""
    workers = available_cpus()
    if key == "a":
        server = start_baseline(model_dir, workers, log_dir)
    else:
        server = Server(
            model_dir, workers=workers, GLUONSEG_PRECISION=PRECISION[key], GLUONSEG_INFERENCE_SCALE=SCALE[key]
        ).start(timeout=600)
    try:
        _load(server.url, jpeg, workers, 0, 2 * workers)  # every worker takes its first requests
        one = _load(server.url, jpeg, 1, args.seconds, args.min_requests)
        two = _load(server.url, jpeg, 2, args.seconds, 2 * args.min_requests)
        peak = max(_memory(pid, "VmHWM") for pid in server.worker_pids())
        response_mask = np.asarray(Image.open(io.BytesIO(two.last_body)))
    finally:
        server.stop()
    return {
        "latency_median_s": median(one.latencies),
        "latency_p90_s": percentile(one.latencies, 90),
        "requests_1": one.requests,
        "rps_1": one.rps,
        "requests_2": two.requests,
        "rps_2": two.rps,
        "peak_rss_bytes": peak,
        "workers": workers,
        "response_mask": response_mask,
    }


def memory_run(model_dir: Path, precision: str, jpeg: bytes, total: int, every: int) -> dict[str, Any]:
    """Each worker's RSS after warm-up and every `every` requests, over `total` requests from 2 clients."""
    server = Server(model_dir, workers=available_cpus(), GLUONSEG_PRECISION=precision).start(timeout=600)  # native
    samples = []
    try:
        _load(server.url, jpeg, 2, 0, 4)
        pids = server.worker_pids()
        samples.append((0, [_memory(pid, "VmRSS") for pid in pids]))
        done, start = 0, time.perf_counter()
        while done < total:
            chunk = min(every, total - done)
            _load(server.url, jpeg, 2, 0, chunk, max_requests=chunk)
            done += chunk
            samples.append((done, [_memory(pid, "VmRSS") for pid in pids]))
        seconds = time.perf_counter() - start
        peaks = [_memory(pid, "VmHWM") for pid in pids]
    finally:
        server.stop()
    return {"precision": precision, "requests": total, "seconds": seconds, "samples": samples, "peaks": peaks}
