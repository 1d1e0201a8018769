"""The INT8 step and `auto` on FCN, PSP and DeepLabV3 trained as `make demo` trains (#24), side by side.

For each algorithm, a job with the demo's hyperparameters (ResNet-50 from scratch, crop 96, 10 epochs) on the
demo's generated dataset, trained with `gluonseg train` (the INT8 step on, its default) unless --model names a
folder trained so already. Reported from the job's own records: the INT8 step's plan (the groups kept FP32 and
their share of the multiply-adds), its agreement with MXNet FP32 on the check pictures, FP32 and INT8 mIoU on
them, its seconds and share of the job; then what `auto` measured in this process on a copy of the folder
(every candidate at 480x480, one warm-up and the median of 3, judged on the check pictures) and chose.

Run: .venv/bin/python -m benchmarks.int8_models --data DIR [--algorithms fcn,psp,deeplab] [--work DIR]
     [--model ALGORITHM=DIR ...] [--requantize] [--no-record] [--section NAME]
(--requantize: the INT8 step again, as the job ran it, on models trained before; the step's seconds are then the new
run's, the job's those of its training.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GLUONSEG = str(Path(sys.executable).parent / "gluonseg")
JOB_SECONDS = "job-seconds.json"  # written beside a model this benchmark trained


def train(algorithm: str, data: Path, model: Path, **overrides: str | int) -> None:
    """`gluonseg train` with the demo's hyperparameters, or `overrides` of them, into `model`; its seconds beside."""
    from gluonseg.demo import FULL

    classes = json.loads((data / "classes.json").read_text())
    hp = {
        "num_classes": len(classes) if isinstance(classes, list) else FULL["classes"],
        "num_training_samples": len(list((data / "train").glob("*.jpg"))),
        "use_pretrained_model": "False",
        "algorithm": algorithm,
        "backbone": "resnet-50",
        "crop_size": FULL["crop"],
        "base_size": FULL["size"],
        "epochs": FULL["epochs"],
        "mini_batch_size": 8,
        "validation_mini_batch_size": 4,
        "optimizer": "adam",
        "learning_rate": 0.001,
        **overrides,
    }
    command = [GLUONSEG, "train", "--data", str(data), "--model-dir", str(model), *[f"{k}={v}" for k, v in hp.items()]]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {algorithm} failed: {proc.stderr[-3000:]}")
    (model / JOB_SECONDS).write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))


def requantize(model: Path, data: Path) -> None:
    """The INT8 step again, as the training job ran it, over the demo folder's channels."""
    from gluonseg.data.channels import SPLITS, pair_channel
    from gluonseg.int8_job import make_int8_model

    validation, train = (
        pair_channel(*(data / folder for folder in SPLITS[split])) for split in ("validation", "train")
    )
    if not make_int8_model(model, validation, train):
        raise RuntimeError(f"{model}: too few pictures to calibrate an INT8 model and check it on others")


def measure(algorithm: str, model: Path, work: Path) -> dict[str, Any]:
    from benchmarks.common.models import copy_for_serving
    from gluonseg.inference.loading import load_predictor

    record = json.loads((model / "model-int8-onnx.json").read_text())
    try:
        job_seconds = json.loads((model / JOB_SECONDS).read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        job_seconds = None
    copy = work / f"{algorithm}-auto"
    copy_for_serving(model, copy)
    load_predictor(copy, backend="auto")
    choice = json.loads((copy / "backend-choice.json").read_text())
    return {"algorithm": algorithm, "model": str(model), "int8": record, "job_seconds": job_seconds, "auto": choice}


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | INT8 kept | FP32 besides the ends | FP32 share of MACs | attempts | check pixels as MXNet FP32 "
        "| check mIoU FP32 / INT8 | INT8 step s | share of the job |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        record = result["int8"]
        miou = record["mIoU"]
        share = f"{record['seconds'] / result['job_seconds']:.0%}" if result["job_seconds"] else "n/a"
        groups = ", ".join(record.get("fp32_groups") or []) or ("none" if record["kept"] else "-")
        mac_share = f"{record['fp32_mac_share']:.1%}" if record.get("fp32_mac_share") is not None else "-"
        lines.append(
            f"| {result['algorithm']} | {'yes' if record['kept'] else 'no: ' + str(record['why_not'])} | {groups} | "
            f"{mac_share} | {len(record['attempts'])} | {record['agreement']:.3%} | "
            f"{miou['fp32']:.4f} / {miou['int8']:.4f} | {record['seconds']} | {share} |"
        )
    lines += ["", "What `auto` measured (s per 480x480 call; pixels of the check pictures as MXNet FP32):", ""]
    lines += ["| model | backend | precision | s | vs MXNet FP32 | pixels as MXNet FP32 | chosen |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        auto = result["auto"]
        base = auto["measured"][0]["seconds"]
        for row in auto["measured"]:
            chosen = "**yes**" if [row["backend"], row["precision"]] == auto["choice"] else ""
            lines.append(
                f"| {result['algorithm']} | {row['backend']} | {row['precision']} | {row['seconds']:.3f} | "
                f"{base / row['seconds']:.2f}x | {row['agreement']:.3%} | {chosen} |"
            )
    return "\n".join(lines)


def main() -> None:
    from benchmarks.common.report import machine, publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the demo's dataset (gluonseg make-dataset)")
    parser.add_argument("--algorithms", default="fcn,psp,deeplab")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gluonseg-int8-models")
    parser.add_argument("--model", action="append", default=[], help="ALGORITHM=DIR: a folder trained so already")
    parser.add_argument("--requantize", action="store_true", help="run the INT8 step again on models trained before")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--section", default="int8 models")
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.model)
    print(machine(), flush=True)
    results = []
    for algorithm in args.algorithms.split(","):
        model = Path(given[algorithm]) if algorithm in given else args.work / algorithm / "model"
        if not (model / "model-int8-onnx.json").exists():
            train(algorithm, args.data, model)
        elif args.requantize:
            requantize(model, args.data)
        results.append(measure(algorithm, model, args.work))
        print(json.dumps({k: results[-1][k] for k in ("algorithm", "job_seconds")}), flush=True)
    publish(args.section, report(results), record=not args.no_record)


if __name__ == "__main__":
    main()
