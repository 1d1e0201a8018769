"""One worker's memory over many pictures of varied sizes, through the real server, for FCN, PSP and DeepLabV3.

One `serve` (nginx + gunicorn), one worker (all cores), native scale, FP32. Requests: JPEGs of random
sizes, 300-1000 px a side (as phone and web pictures come). RSS (/proc/<pid>/status) after every
request and the worker's peak (VmHWM). A worker's RSS at any moment depends on the two picture shapes
whose compiled graphs it holds (gluonseg.shape_graphs), so growth is read on like-for-like moments:
every 50th request pair is 1000x1000 then 992x1000 (the largest canvases), and the RSS after those
probes is compared: first probe after warm-up (request 100) against the last. Also reported: the
highest RSS in the second and in the last tenth of the run.

Models: ResNet-50, 21 classes, crop 240, random weights (memory does not depend on their values).

Run: .venv/bin/python -m benchmarks.worker_memory [--requests fcn=1000 psp=1000 deeplab=1000] [--no-record]

Each model's result is kept in benchmarks/results/worker_memory.json as soon as it is measured (with the
machine), and a later run with `--resume` measures only the models missing there: a 1,000-request run is
about half an hour per model on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.common.models import random_model
from benchmarks.common.pictures import noise_jpeg
from benchmarks.common.procfs import status_mb
from benchmarks.common.report import machine, publish
from benchmarks.common.server import Server
from serve.capacity import RESERVED_MB

PROBE_EVERY = 50
RESULTS = Path(__file__).parent / "results" / "worker_memory.json"
INSTANCES = {"ml.c5.xlarge": (4, 8), "ml.c5.2xlarge": (8, 16), "ml.m5.xlarge": (4, 16), "ml.c6i.4xlarge": (16, 32)}


def sizes(count: int, seed: int = 7) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i % PROBE_EVERY == PROBE_EVERY - 2:
            out.append((1000, 1000))
        elif i % PROBE_EVERY == PROBE_EVERY - 1:
            out.append((1000, 992))
        else:
            out.append((rng.randint(300, 1000), rng.randint(300, 1000)))
    return out


def run(algorithm: str, count: int, root: Path) -> dict:
    model = random_model(root / algorithm, algorithm, classes=21, crop=240)
    server = Server(model, workers=1).start(timeout=600)
    try:
        (pid,) = server.worker_pids()
        rss, start = [], time.monotonic()
        for i, (w, h) in enumerate(sizes(count)):
            r = requests.post(
                server.url + "/invocations",
                data=noise_jpeg(w, h, i),
                headers={"Content-Type": "image/jpeg"},
                timeout=300,
            )
            if r.status_code != 200:
                raise RuntimeError(f"request {i} ({w}x{h}): {r.status_code} {r.text[:200]}")
            rss.append(status_mb(pid, "VmRSS"))
            if (i + 1) % 100 == 0:
                print(f"{algorithm}: {i + 1} requests, RSS {rss[-1]:.0f} MB", flush=True)
        peak = status_mb(pid, "VmHWM")
        same_worker = server.worker_pids() == [pid]
    finally:
        server.stop()
    probes = [rss[i] for i in range(PROBE_EVERY - 1, count, PROBE_EVERY)] or [rss[-1]]  # --quick: no probe yet
    tenth = max(1, count // 10)
    return {
        "algorithm": algorithm,
        "requests": count,
        "seconds": time.monotonic() - start,
        "after_first": rss[0],
        "probes": probes,
        "warm_probe": probes[1] if len(probes) > 1 else probes[0],
        "last_probe": probes[-1],
        "max_second_tenth": max(rss[tenth : 2 * tenth]),
        "max_last_tenth": max(rss[-tenth:]),
        "peak": peak,
        "same_worker": same_worker,
    }


def render(results: list[dict]) -> str:
    lines = [
        "One worker (2 OpenMP threads), native scale, FP32, JPEGs of 300-1000 px a side; RSS in MB. "
        f"Probe: RSS right after a 1000x1000 + 992x1000 pair, every {PROBE_EVERY} requests "
        "(the same cached shapes each time); growth = last probe / probe at request 100 - 1.",
        "",
        "| model | requests | RSS after 1st | probe @100 | last probe | growth | max RSS 2nd tenth | max RSS last "
        "tenth | peak (VmHWM) | worker replaced |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        growth = r["last_probe"] / r["warm_probe"] - 1
        lines.append(
            f"| {r['algorithm']}-resnet50 | {r['requests']} | {r['after_first']:.0f} | {r['warm_probe']:.0f} | "
            f"{r['last_probe']:.0f} | {growth:+.1%} | {r['max_second_tenth']:.0f} | {r['max_last_tenth']:.0f} | "
            f"{r['peak']:.0f} | {'no' if r['same_worker'] else 'YES'} |"
        )
    lines += [
        "",
        "Probes (MB): " + "; ".join(f"{r['algorithm']}: {', '.join(f'{p:.0f}' for p in r['probes'])}" for r in results),
        "",
    ]
    lines += [
        "Workers each instance holds at these peaks (min(vCPU, (memory - "
        f"{RESERVED_MB} MB) // peak), serve/capacity.py):",
        "",
        "| instance | vCPU | memory GiB | " + " | ".join(r["algorithm"] for r in results) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in results) + " |",
    ]
    for name, (cpus, gib) in INSTANCES.items():
        fits = [min(cpus, (gib * 1024 - RESERVED_MB) // r["peak"]) for r in results]
        lines.append(f"| {name} | {cpus} | {gib} | " + " | ".join(f"{int(f)}" for f in fits) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--requests",
        nargs="+",
        default=["fcn=1000", "psp=1000", "deeplab=1000"],
        help="ALGORITHM=COUNT for each model to run",
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--resume", action="store_true", help="keep the models already in " + str(RESULTS))
    args = parser.parse_args()
    counts = {name: int(count) for name, count in (item.split("=") for item in args.requests)}
    here = machine()
    kept = json.loads(RESULTS.read_text()) if args.resume and RESULTS.exists() else {}
    if kept and kept.get("machine") != here:
        raise SystemExit(f"{RESULTS} was measured on another machine; run without --resume")
    done = {r["algorithm"]: r for r in kept.get("results", []) if counts.get(r["algorithm"]) == r["requests"]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, count in counts.items():
            if name not in done:
                done[name] = run(name, count, Path(tmp))
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps({"machine": here, "results": list(done.values())}, indent=1))
    results = [done[name] for name in counts]
    publish("worker memory", render(results), not args.no_record)


if __name__ == "__main__":
    main()
