"""Rare classes: plain cross-entropy against median-frequency class weights and OHEM, on a generated dataset
whose last classes are short thick strokes and small blobs (`gluonseg make-dataset --rare`), same seed and budget.

Each run is the real `gluonseg train` (FCN-ResNet-50 from scratch, CPU); the scores are the validation
pass of the epoch kept as `model_best.params` (best mIOU, whole images) and of the last epoch.
Run: .venv/bin/python -m benchmarks.rare_classes [--epochs 10 --work /tmp/rare]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common.report import publish
from gluonseg.data.synthetic import make_dataset

RUNS = {
    "none": {},
    "median_frequency": {"class_weights": "median_frequency"},
    "ohem": {"loss": "ohem"},
}
TARGET_GAIN = 0.1


def start_training(data: Path, model: Path, hp: dict[str, Any], threads: int, seed: int) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "gluonseg"), "train", "--data", str(data), "--model-dir", str(model)]
    command += [f"{k}={v}" for k, v in hp.items()]
    env = {**os.environ, "GLUONSEG_SEED": str(seed), "OMP_NUM_THREADS": str(threads)}
    log = open(model.parent / f"{model.name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, model: Path) -> None:
    if proc.wait() != 0:
        print((model.parent / f"{model.name}.log").read_text()[-4000:])
        raise SystemExit(proc.returncode)


def scores(record: dict[str, Any], rare: list[int], num_classes: int) -> dict[str, Any]:
    iou = [v or 0.0 for v in record["iou_per_class"]]
    common = [c for c in range(num_classes) if c not in rare]
    return {
        "epoch": record["epoch"],
        "mIOU": record["mIOU"],
        "rare": [iou[c] for c in rare],
        "rare_mean": sum(iou[c] for c in rare) / len(rare),
        "common_mean": sum(iou[c] for c in common) / len(common),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--rare", type=int, default=2)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--validation", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--base-size", type=int, default=None, help="base_size (default: --size)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads per training job")
    parser.add_argument(
        "--parallel", action="store_true", help="run the three jobs at once (seeded: the same scores, sooner)"
    )
    parser.add_argument("--seed", type=int, default=0, help="GLUONSEG_SEED of the training jobs (the data keep seed 0)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gluonseg-rare-"))
    data = work / "data"
    if not (data / "train").exists():
        make_dataset(
            data, classes=args.classes, train=args.train, validation=args.validation, size=args.size, rare=args.rare
        )
    rare = list(range(args.classes - args.rare, args.classes))
    base = {
        "num_classes": args.classes,
        "num_training_samples": args.train,
        "use_pretrained_model": "False",
        "crop_size": args.crop,
        "base_size": args.base_size or args.size,
        "epochs": args.epochs,
        "mini_batch_size": 8,
        "validation_mini_batch_size": 1,
        "optimizer": "adam",
        "learning_rate": 0.001,
    }
    results = {}
    started: dict[str, tuple[subprocess.Popen | None, float]] = {}
    for name, extra in RUNS.items():
        model = work / f"model-{name}"
        model.mkdir(parents=True, exist_ok=True)
        proc = start_training(data, model, {**base, **extra}, args.threads, args.seed)
        started[name] = (proc, time.perf_counter())
        if not args.parallel:
            finish(proc, model)
            started[name] = (None, time.perf_counter() - started[name][1])
    for name, (proc, value) in started.items():
        model = work / f"model-{name}"
        if proc is not None:
            finish(proc, model)
        seconds = value if proc is None else time.perf_counter() - value
        history = json.loads((model / "output" / "data" / "metrics.json").read_text())
        stats = json.loads((model / "class_stats.json").read_text())
        best = max(history, key=lambda r: r["mIOU"])  # the first best epoch, as early stopping keeps it
        results[name] = {
            "best": scores(best, rare, args.classes),
            "last": scores(history[-1], rare, args.classes),
            "weights": stats["weights"],
            "seconds": seconds,
        }
        print(name, json.dumps(results[name]), flush=True)
    publish("rare-classes", report(args, base, rare, stats, results), record=not args.no_record)


def report(args, base: dict[str, Any], rare: list[int], stats: dict[str, Any], results: dict[str, Any]) -> str:
    shares = ", ".join(f"class {c} {s:.2%}" for c, s in enumerate(stats["pixel_share"]))
    rare_cols = " | ".join(f"IoU class {c}" for c in rare)
    rows = [
        f"| loss | epoch | {rare_cols} | rare mean IoU | common mean IoU | mIOU | minutes |",
        "| --- | --- | " + " | ".join("---" for _ in rare) + " | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        for which in ("best", "last"):
            s = r[which]
            label = f"`{name}`" + (" (best epoch)" if which == "best" else " (last epoch)")
            rows.append(
                f"| {label} | {s['epoch']} | "
                + " | ".join(f"{v:.4f}" for v in s["rare"])
                + f" | {s['rare_mean']:.4f} | {s['common_mean']:.4f} | {s['mIOU']:.4f} | "
                + (f"{r['seconds'] / 60:.1f} |" if which == "best" else "|")
            )
    plain = results["none"]["best"]
    verdicts = []
    for name in ("median_frequency", "ohem"):
        s = results[name]["best"]
        gain, delta = s["rare_mean"] - plain["rare_mean"], s["mIOU"] - plain["mIOU"]
        met = gain >= TARGET_GAIN and delta >= 0
        verdicts.append(
            f"`{name}`: rare mean IoU {gain:+.4f}, mIOU {delta:+.4f} against `none` "
            f"({'target met' if met else 'target NOT met'})"
        )
    weights = ", ".join(f"{w:.3g}" for w in results["median_frequency"]["weights"])
    return (
        f"FCN-ResNet-50, `use_pretrained_model=False`, `gluonseg make-dataset --classes {args.classes} "
        f"--rare {args.rare} --train {args.train} --validation {args.validation} --size {args.size}` "
        f"(rare classes {', '.join(map(str, rare))}: short strokes about 8 px thick and blobs about 16 px across). "
        f"Training-mask pixel share: {shares}. "
        f"Same seed (`GLUONSEG_SEED={args.seed}`) and budget for every run: {args.epochs} epochs, crop {args.crop}, "
        f"base_size {base['base_size']}, batch 8, "
        f"adam lr 0.001, poly; validation on whole images; {args.threads} OpenMP thread(s) per job"
        + (", the three jobs at once" if args.parallel else "")
        + ". Only the loss differs. Hyperparameters: "
        f"`{json.dumps(base)}` plus the run's key. median_frequency's weights: [{weights}].\n\n"
        + "\n".join(rows)
        + "\n\nTarget (issue #16): rare-class IoU up by at least "
        + f"{TARGET_GAIN} absolute with one of them, overall mIOU not lower (best epochs compared). "
        + "; ".join(verdicts)
        + "."
    )


if __name__ == "__main__":
    main()
