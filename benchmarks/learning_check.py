"""Learning check: FCN-ResNet-50 from scratch on the generated dataset reaches validation mIOU >= 0.6.

Runs the real `gluonseg train` on CPU and records the curve and the time in BENCHMARKS.md.
Run: .venv/bin/python -m benchmarks.learning_check [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.report import publish
from gluonseg.data.synthetic import make_dataset

TARGET = 0.6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--validation", type=int, default=24)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gluonseg-learn-"))
    data = work / "data"
    if not (data / "train").exists():
        make_dataset(data, classes=5, train=args.train, validation=args.validation, size=160, seed=0)
    hp = {
        "num_classes": 5,
        "num_training_samples": args.train,
        "use_pretrained_model": "False",
        "crop_size": args.crop,
        "base_size": 160,
        "epochs": args.epochs,
        "mini_batch_size": 8,
        "validation_mini_batch_size": 8,
        "optimizer": "adam",
        "learning_rate": 0.001,
    }
    command = [
        str(Path(sys.executable).parent / "gluonseg"),
        "train",
        "--data",
        str(data),
        "--model-dir",
        str(work / "model"),
        *[f"{k}={v}" for k, v in hp.items()],
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, env={"GLUONSEG_SEED": "0", **__import__("os").environ}
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    history = json.loads((work / "model" / "output" / "data" / "metrics.json").read_text())
    best = max(r["mIOU"] for r in history)
    reached = next((r["epoch"] for r in history if r["mIOU"] >= TARGET), None)
    rows = ["| epoch | train loss | validation mIOU | pixel accuracy | seconds |", "| --- | --- | --- | --- | --- |"]
    rows += [
        f"| {r['epoch']} | {r['train_loss']:.4f} | {r['mIOU']:.4f} | {r['pixel_accuracy']:.4f} | "
        f"{r['seconds']:.0f} |"
        for r in history
    ]
    verdict = (
        f"reached mIOU >= {TARGET} at epoch {reached}"
        if reached is not None
        else f"did NOT reach {TARGET} (best {best:.4f})"
    )
    body = (
        f"FCN-ResNet-50, `use_pretrained_model=False`, generated dataset (5 classes, {args.train} train / "
        f"{args.validation} validation, ~160 px), crop {args.crop}, batch 8, adam lr 0.001, poly schedule, "
        f"{args.epochs} epochs, CPU. Hyperparameters: `{json.dumps(hp)}`.\n\n"
        + "\n".join(rows)
        + f"\n\nBest validation mIOU {best:.4f}; {verdict}; total wall time {seconds / 60:.1f} min "
        "(training + validation + export)."
    )
    curves = Path(__file__).parent / "results" / "learning_check_curves.png"
    curves.parent.mkdir(exist_ok=True)
    shutil.copyfile(work / "model" / "output" / "data" / "training_curves.png", curves)
    body += f"\n\n![learning curves](benchmarks/results/{curves.name})"
    publish("learning-check", body)


if __name__ == "__main__":
    main()
