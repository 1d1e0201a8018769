"""The serving default's start-up cost: `serve` with GLUONSEG_BACKEND unset (auto) against MXNet FP32.

For each model, the real `serve` (nginx + gunicorn, one worker per core as SageMaker starts it) three times,
side by side on one machine:
1. GLUONSEG_BACKEND=mxnet, the reference;
2. GLUONSEG_BACKEND unset, on a fresh copy of the model folder: auto exports the model and measures every
   candidate before the first /ping answers 200;
3. the same again: auto reuses its choice (backend-choice.json) and the export.
Reported: seconds from the command to the first 200 on /ping (SageMaker allows 4 minutes), what auto
measured and chose, and each worker's peak memory (VmHWM) after `--requests` JPEGs of 300-1000 px a side
(the worker that measured holds every candidate once: its peak is the one capacity planning needs).

Models: ResNet-101 (the heavier backbone), 21 classes, crop 480 (twice SageMaker's default), random
weights: the load's work does not depend on the weights' values. auto's masks on random weights are
near ties everywhere, so its agreement figures here say nothing of a trained model's (BENCHMARKS.md
"backends" has those).

Run: .venv/bin/python -m benchmarks.auto_start [--algorithms fcn psp deeplab] [--crop 480] [--requests 20]
     [--no-record]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.common.models import random_model
from benchmarks.common.pictures import noise_jpeg
from benchmarks.common.procfs import status_mb
from benchmarks.common.report import machine, publish
from benchmarks.common.server import Server
from gluonseg.util import available_cpus

PING_WINDOW_S = 240  # SageMaker's limit for the first healthy /ping


def serve_once(model: Path, backend: str, request_count: int) -> dict:
    """Start `serve`, time the first 200 on /ping, send the pictures, read each worker's peak, stop."""
    start = time.monotonic()
    server = Server(model, workers=available_cpus(), GLUONSEG_BACKEND=backend).start(timeout=900)
    ready = time.monotonic() - start
    try:
        rng = random.Random(3)
        for index in range(request_count):
            body = noise_jpeg(rng.randint(300, 1000), rng.randint(300, 1000), index)
            headers = {"Content-Type": "image/jpeg"}
            r = requests.post(server.url + "/invocations", data=body, headers=headers, timeout=600)
            if r.status_code != 200:
                raise RuntimeError(f"{model.name} {backend or 'auto'}: request {index}: {r.status_code} {r.text[:200]}")
        peaks = sorted((status_mb(pid, "VmHWM") for pid in server.worker_pids()), reverse=True)
    finally:
        server.stop()
    return {"ready_s": ready, "peaks_mb": peaks}


def run(algorithm: str, crop: int, request_count: int, root: Path) -> dict:
    reference = random_model(root / f"{algorithm}-reference", algorithm, classes=21, crop=crop, backbone="resnet-101")
    fresh = Path(shutil.copytree(reference, root / f"{algorithm}-auto"))
    result = {"algorithm": algorithm, "crop": crop}
    result["mxnet"] = serve_once(reference, "mxnet", request_count)
    print(f"{algorithm}: mxnet ready in {result['mxnet']['ready_s']:.1f} s", flush=True)
    result["auto_first"] = serve_once(fresh, "", request_count)
    print(f"{algorithm}: auto (first) ready in {result['auto_first']['ready_s']:.1f} s", flush=True)
    result["auto_again"] = serve_once(fresh, "", 0)
    result["choice"] = json.loads((fresh / "backend-choice.json").read_text())
    return result


def render(results: list[dict], request_count: int) -> str:
    workers = available_cpus()
    lines = [
        f"`serve` with {workers} worker(s) (one per core), ResNet-101, 21 classes, random weights; ready = seconds "
        f"from the command to the first 200 on /ping (SageMaker allows {PING_WINDOW_S} s). Peak = each worker's "
        f"VmHWM in MB after {request_count} JPEGs of 300-1000 px a side at native scale, largest first.",
        "",
        "| model | crop | MXNet FP32 ready s | auto first start s | auto restart s | auto chose | MXNet peaks MB | "
        "auto peaks MB (first start) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        choice = r["choice"]
        lines.append(
            f"| {r['algorithm']}-resnet101 | {r['crop']} | {r['mxnet']['ready_s']:.1f} | "
            f"{r['auto_first']['ready_s']:.1f} | {r['auto_again']['ready_s']:.1f} | {' '.join(choice['choice'])} | "
            f"{' / '.join(f'{p:.0f}' for p in r['mxnet']['peaks_mb'])} | "
            f"{' / '.join(f'{p:.0f}' for p in r['auto_first']['peaks_mb'])} |"
        )
    lines += ["", "What auto measured at the first start (seconds a call at the timing size; skipped: over budget):"]
    lines.append("")
    for r in results:
        choice = r["choice"]
        rows = ", ".join(f"{m['backend']} {m['precision']} {m['seconds']:.3f} s" for m in choice["measured"])
        skipped = ", ".join(" ".join(pair) for pair in choice.get("skipped", [])) or "none"
        lines.append(
            f"- {r['algorithm']}: {rows}; skipped: {skipped}; export and measuring took "
            f"{choice['seconds_to_choose']:.0f} s at {choice['input'][0]}x{choice['input'][1]}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=["fcn", "psp", "deeplab"])
    parser.add_argument("--crop", type=int, default=480)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(name, args.crop, args.requests, Path(tmp)) for name in args.algorithms]
    publish("auto start", render(results, args.requests), not args.no_record)


if __name__ == "__main__":
    main()
