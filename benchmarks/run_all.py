"""`make bench`: every benchmark in one run, from a fresh clone; each rewrites its own section of BENCHMARKS.md.

Steps, in order (each its own process, so each sizes MXNet's thread pool for itself):
1. machine limit: this CPU's FP32 roof and the models' MACs (benchmarks.machine_limit);
2. the up-front mask scan on 10,000 generated masks (benchmarks.mask_scan);
3. the generated dataset (5 classes, 96 training / 24 validation pictures of ~160 px, seed 0) and FCN,
   PSP and DeepLab on ResNet-50 trained on it from scratch by the real `gluonseg train` (crop 128,
   batch 8, adam lr 0.001, GLUONSEG_SEED=0). Both are kept in --work and reused by later runs; an FCN from
   benchmarks.learning_check (same dataset and settings, more epochs) is reused with --learning-check-dir;
4. training throughput (benchmarks.training_throughput);
5. serving side by side (benchmarks.serving), including the INT8 export of each model;
6. gunicorn alone against nginx + gunicorn under concurrency 1-16 (benchmarks.serving_front);
7. one worker's memory over pictures of varied sizes, FCN, PSP and DeepLab (benchmarks.worker_memory).

Run: .venv/bin/python -m benchmarks.run_all [--work DIR] [--epochs 6] [--learning-check-dir DIR] [--quick]
--quick: a tiny dataset, one epoch, small crops and short load runs, nothing written to BENCHMARKS.md: checks
that every step runs end to end (minutes, not an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.report import publish
from gluonseg.util import available_cpus

ALGORITHMS = ("fcn", "psp", "deeplab")
SEED = 0
DATASET = {"classes": 5, "train": 96, "validation": 24, "size": 160, "seed": SEED}
TRAIN_HP = {
    "num_classes": 5,
    "use_pretrained_model": "False",
    "crop_size": 128,
    "base_size": 160,
    "mini_batch_size": 8,
    "validation_mini_batch_size": 8,
    "optimizer": "adam",
    "learning_rate": 0.001,
}
MODEL_FILES = ("hyperparams.json", "model_best.params", "model_algo-1", "model-symbol.json", "model-0000.params")
METRICS = Path("output") / "data" / "metrics.json"


def run_step(name: str, args: list[str], timings: dict[str, float], env: dict[str, str] | None = None) -> None:
    print(f"\n=== {name}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True, env=env)
    timings[name] = time.perf_counter() - start


def ensure_dataset(data: Path, quick: bool) -> None:
    from gluonseg.data.synthetic import make_dataset

    if (data / "classes.json").exists():
        return
    spec = {**DATASET, "train": 16, "validation": 6} if quick else DATASET
    make_dataset(data, **spec)


def reuse_learning_check(source: Path, dest: Path) -> bool:
    """Copy an FCN trained by benchmarks.learning_check (same dataset and settings) instead of training one."""
    model = source / "model"
    if not (model / "hyperparams.json").exists():
        return False
    hp = json.loads((model / "hyperparams.json").read_text())
    wanted = {"algorithm": "fcn", "crop_size": TRAIN_HP["crop_size"], "num_classes": DATASET["classes"]}
    if any(hp.get(k) != v for k, v in wanted.items()) or hp.get("num_training_samples") != DATASET["train"]:
        print(f"not reusing {model}: it was trained with other settings", flush=True)
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (model / name).exists():
            shutil.copyfile(model / name, dest / name)
    (dest / METRICS).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model / METRICS, dest / METRICS)
    (dest / "REUSED_FROM").write_text(str(model) + "\n")
    return True


def train_model(algorithm: str, data: Path, dest: Path, epochs: int, crop: int) -> None:
    hp = {
        **TRAIN_HP,
        "algorithm": algorithm,
        "crop_size": crop,
        "epochs": epochs,
        "num_training_samples": len(list((data / "train").iterdir())),
    }
    command = [str(Path(sys.executable).parent / "gluonseg"), "train", "--data", str(data), "--model-dir", str(dest)]
    command += [f"{k}={v}" for k, v in hp.items()]
    print(f"\n=== train {algorithm}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, env={**os.environ, "GLUONSEG_SEED": str(SEED)})
    shutil.rmtree(dest / "checkpoints", ignore_errors=True)  # hundreds of MB the benchmarks do not need


def model_note(models: Path) -> str:
    parts = []
    for algorithm in ALGORITHMS:
        folder = models / algorithm / "model"
        if not (folder / METRICS).exists():
            continue
        history = json.loads((folder / METRICS).read_text())
        best = max(history, key=lambda r: r["mIOU"])
        origin = " (the learning check's model)" if (folder / "REUSED_FROM").exists() else ""
        parts.append(f"{algorithm} {len(history)} epochs{origin}, best validation mIoU {best['mIOU']:.3f}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gluonseg-bench")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs for each model trained here")
    parser.add_argument("--learning-check-dir", type=Path, default=None, help="reuse its FCN (its --work folder)")
    parser.add_argument("--quick", action="store_true", help="tiny everything, BENCHMARKS.md untouched")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))
    work = args.work / "quick" if args.quick else args.work
    work.mkdir(parents=True, exist_ok=True)
    record = [] if not args.quick else ["--no-record"]
    crop, serve_crop = (64, 64) if args.quick else (TRAIN_HP["crop_size"], 240)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    run_step(
        "machine limit",
        ["benchmarks.machine_limit", "--crop", str(serve_crop), "--train-crop", str(crop), *record],
        timings,
    )
    if not args.quick:
        run_step("mask scan", ["benchmarks.mask_scan", "--count", "10000"], timings)

    data, models = work / "data", work / "models"
    step = time.perf_counter()
    ensure_dataset(data, args.quick)
    for algorithm in ALGORITHMS:
        dest = models / algorithm / "model"
        if (dest / "model_best.params").exists():
            print(f"reusing the trained {algorithm} in {dest}", flush=True)
            continue
        if algorithm == "fcn" and args.learning_check_dir and reuse_learning_check(args.learning_check_dir, dest):
            print(f"reusing the learning check's FCN from {args.learning_check_dir}", flush=True)
            continue
        train_model(algorithm, data, dest, 1 if args.quick else args.epochs, crop)
    note = model_note(models)
    (models / "NOTE").write_text(note + "\n")
    timings["dataset and models"] = time.perf_counter() - step

    throughput = ["benchmarks.training_throughput", "--data", str(data), "--crop", str(crop), *record]
    if args.quick:
        throughput += ["--warmup", "1", "--iterations", "2", "--loader-batches", "4", "--profile-iterations", "1"]
    run_step("training throughput", throughput, timings)

    serving = ["benchmarks.serving", "--work", str(work), "--serve-crop", str(serve_crop), *record]
    if args.quick:
        serving += ["--seconds", "2", "--min-requests", "2", "--profile-runs", "2", "--memory-requests", "20"]
    run_step("serving", serving, timings)

    front = ["benchmarks.serving_front", *record]
    if args.quick:
        front += ["--seconds", "5", "--levels", "1", "4"]
    run_step("serving front", front, timings)

    memory = ["benchmarks.worker_memory", *record]
    if args.quick:
        memory += ["--requests", "fcn=4", "psp=4", "deeplab=4"]
    run_step("worker memory", memory, timings)

    total = time.perf_counter() - start
    lines = [
        "`make bench` (= `.venv/bin/python -m benchmarks.run_all`) ran every benchmark above in one go: "
        + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings.items())
        + f"; {total / 60:.1f} min in all.",
        "",
        f"Reproducibility: dataset `make_dataset({', '.join(f'{k}={v}' for k, v in DATASET.items())})`; models "
        f"trained by `gluonseg train` with GLUONSEG_SEED={SEED} and `{json.dumps({**TRAIN_HP, 'crop_size': crop})}` "
        f"({note}); work folder `{work}` (reused by later runs: delete it to start over). Training uses "
        "non-deterministic multi-threaded kernels, so a rerun's models (and accuracy figures) match closely but "
        "not bit for bit; timing figures vary with the machine's load.",
    ]
    publish("bench-run", "\n".join(lines), not args.quick)


if __name__ == "__main__":
    main()
