"""OpenVINO's memory over pictures of varied sizes: its per-shape runtime cache on (OpenVINO's default, 5,000
shapes) vs off (gluonseg's setting, gluonseg.inference.onnx_backends.RUNTIME_CACHE_CAPACITY), side by side.

`auto`, the serving default, picks OpenVINO BF16 on CPUs with AMX, and the network's input takes each
picture's own size at native scale, so every new size is a new shape for OpenVINO. Each setting runs in a
process of its own (RSS from /proc/self/status): the same predictor code, native scale, BF16 (FP32 where the
CPU has no BF16), random-weight ResNet-50 models with 21 classes, crop 240. Pictures: random sizes 300-1000 px
a side, as phone and web pictures come; every 25th is a 1000x1000 probe (the same shape each time), after
which RSS is read, so probes compare like with like. Also: milliseconds per picture over the run.

Run: .venv/bin/python -m benchmarks.openvino_shapes [--pictures 150] [--models fcn psp deeplab] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common.models import random_model
from benchmarks.common.procfs import status_mb
from benchmarks.common.report import publish

REPO = Path(__file__).resolve().parents[1]
PROBE_EVERY = 25
SETTINGS = {"OpenVINO's default (cache of 5000 shapes)": 5000, "gluonseg (no cache)": 0}


def sizes(count: int, seed: int = 7) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [
        (1000, 1000) if i % PROBE_EVERY == PROBE_EVERY - 1 else (rng.randint(300, 1000), rng.randint(300, 1000))
        for i in range(count)
    ]


def child(capacity: int, model_dir: Path, count: int) -> dict:
    """Runs in its own process: load, predict `count` pictures, read RSS after each probe."""
    import os

    import gluonseg.inference.onnx_backends as backends
    from gluonseg.inference.loading import load_predictor

    backends.RUNTIME_CACHE_CAPACITY = capacity
    predictor = load_predictor(model_dir, backend="openvino", precision="bf16")
    loaded = status_mb(os.getpid(), "VmRSS")
    probes, start = [], time.perf_counter()
    for i, (width, height) in enumerate(sizes(count)):
        predictor.predict(np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8))
        if i % PROBE_EVERY == PROBE_EVERY - 1:
            probes.append(status_mb(os.getpid(), "VmRSS"))
    return {
        "precision": predictor.precision,
        "loaded": loaded,
        "probes": probes,
        "ms_per_picture": 1000 * (time.perf_counter() - start) / count,
        "peak": status_mb(os.getpid(), "VmHWM"),
    }


def measure(capacity: int, model_dir: Path, count: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.openvino_shapes", "--child", str(capacity), str(model_dir), str(count)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=3600,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(rows: list[tuple[str, str, dict]], count: int) -> str:
    lines = [
        f"One process per row, {count} pictures of 300-1000 px a side, native scale, OpenVINO "
        f"{rows[0][2]['precision']}; ResNet-50 models with 21 classes, crop 240, random weights. RSS in MB after "
        f"a 1000x1000 probe every {PROBE_EVERY} pictures (the same shape each time).",
        "",
        "| model | OpenVINO runtime cache | loaded | first probe | last probe | growth | peak (VmHWM) "
        "| ms per picture |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm, setting, r in rows:
        lines.append(
            f"| {algorithm}-resnet50 | {setting} | {r['loaded']:.0f} | {r['probes'][0]:.0f} | {r['probes'][-1]:.0f} "
            f"| {r['probes'][-1] - r['probes'][0]:+.0f} | {r['peak']:.0f} | {r['ms_per_picture']:.0f} |"
        )
    lines += ["", "Probes (MB):"]
    lines += [f"- {a}, {s}: {', '.join(f'{p:.0f}' for p in r['probes'])}" for a, s, r in rows]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=150)
    parser.add_argument("--models", nargs="+", default=["fcn", "psp", "deeplab"])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.models:
            model = random_model(Path(tmp) / algorithm, algorithm, classes=21, crop=240)
            measure(0, model, 1)  # makes the ONNX export (MXNet in that process), so no measured row pays for it
            for setting, capacity in SETTINGS.items():
                rows.append((algorithm, setting, measure(capacity, model, args.pictures)))
                print(algorithm, setting, rows[-1][2], flush=True)
    publish("openvino shapes", render(rows, args.pictures), not args.no_record)


if __name__ == "__main__":
    main()
