"""Serving, side by side: stock GluonCV against our handler in FP32, INT8 and BF16, for FCN, PSP and DeepLab.

Variants (ResNet-50 backbone; one generated 800x600 JPEG, the notebook's picture size):
  (a)  stock GluonCV, as a user writes it: the GluonCV class, `load_parameters`, not hybridized,
       `mx.image.imdecode`, GluonCV's `test_transform`, `predict()` on the whole decoded image,
       argmax, `get_color_pallete`, PNG. Served by a minimal Flask app under gunicorn
       (`benchmarks.serving_baseline`).
  (a') in-process only: the same stock network's `predict()` on the whole image resized as the crop
       scale resizes it (short side = crop), with our resize/softmax around it: what (e)'s tiles are
       compared with at equal scale.
  (b)  our handler as shipped (serve.handler: decode, native scale = the whole picture through the graph
       compiled for its shape, mask, PNG), FP32;
  (c)  the same, INT8 (the model-int8-* files exported with `gluonseg quantize`, calibrated on the
       first 10 generated validation images);
  (d)  the same, BF16 (converted at load);
  (e)  our handler at crop scale (GLUONSEG_INFERENCE_SCALE=crop: short side = crop, fixed-shape tiles), FP32.

Measured:
- through the real server (gunicorn, workers x threads = cores, i.e. 2 x 1 here): latency per request
  with 1 client (median, p90), requests/s with 1 and with 2 concurrent clients, each worker's peak RSS;
- in-process, one OpenMP thread (what one worker has): where the time of one request goes (decode,
  resize/normalise/tiles, network, logits -> mask, encode), and the network's achieved GMAC/s against the
  1-thread FP32 roof from benchmarks.machine_limit;
- accuracy: each variant's mask on the picture against (a)'s and (a')'s, and mIoU on the generated
  validation set (see "Models" below);
- memory: one worker's RSS over `--memory-requests` requests through the server.

Models: FCN, PSP and DeepLab trained by benchmarks.run_all on the generated dataset at crop 128 (random
weights would make every accuracy column meaningless). Speed is measured on a copy of each folder whose
hyperparams say crop 240 (SageMaker's default crop_size): the networks' parameters do not depend on the
crop size, so that copy serves the same weights on 240x240 tiles. Accuracy (validation mIoU, agreement on
the validation set) is measured on the folder as trained (crop 128), where the weights belong; agreement on
the 800x600 picture uses the crop-240 copy.

Run: .venv/bin/python -m benchmarks.serving --work DIR [--algorithms fcn,psp,deeplab] [--seconds 15]
     [--memory-requests 1000] [--serve-crop 240] [--report-only] [--no-record]
(DIR holds data/ and models/<algorithm>/model from benchmarks.run_all.) The process re-runs itself with
OMP_NUM_THREADS=1 so that in-process figures match one worker.

This module runs the steps; the variants in process are in benchmarks.serving_variants, (a) as a server in
benchmarks.serving_baseline, the runs through a server in benchmarks.serving_runs, and the tables and
verdicts in benchmarks.serving_report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common.pictures import synthetic_picture
from benchmarks.common.report import publish
from benchmarks.serving_report import report, verdicts
from benchmarks.serving_runs import memory_run, serve_and_load
from benchmarks.serving_variants import (
    CALIBRATION_IMAGES,
    SERVED,
    VARIANTS,
    equal_fraction,
    make_variant,
    profile,
    serving_copy,
    validation_scores,
)

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"


def _reexec_single_threaded() -> None:
    if os.environ.get("OMP_NUM_THREADS") != "1" or os.environ.get("MXNET_CPU_WORKER_NTHREADS") != "1":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.serving", *sys.argv[1:]], env)


def run_model(algorithm: str, work: Path, jpeg: bytes, truth: np.ndarray, args, log_dir: Path) -> dict[str, Any]:
    import gc

    from gluonseg.data.channels import SPLITS, pair_channel
    from gluonseg.data.label_map import load_label_map
    from gluonseg.inference.precision import export_int8

    trained = work / "models" / algorithm / "model"
    data = work / "data"
    fast = serving_copy(trained, work / "serve" / f"{algorithm}-{args.serve_crop}", args.serve_crop)
    calibration = data / "validation"
    for folder in (trained, fast):
        export_int8(folder, calibration, CALIBRATION_IMAGES)
    image_dir, mask_dir = SPLITS["validation"]
    samples = pair_channel(data / image_dir, data / mask_dir)
    label_map = load_label_map(data / "label_map" if (data / "label_map").is_dir() else None, "validation")
    num_classes = len(json.loads((data / "classes.json").read_text()))

    res: dict[str, Any] = {"profile": {}, "accuracy": {}, "served": {}, "precision": {}}
    picture_masks: dict[str, np.ndarray] = {}
    val_masks: dict[str, list[np.ndarray]] = {}
    miou: dict[str, float] = {}
    for key in VARIANTS:
        print(f"[{algorithm} {key}] in-process profile and accuracy", flush=True)
        variant = make_variant(key, fast)
        res["precision"][key] = getattr(variant, "precision", "fp32")
        timed = profile(variant, jpeg, args.profile_runs)
        res["profile"][key] = timed.stages
        picture_masks[key] = timed.mask
        del variant
        gc.collect()
        variant = make_variant(key, trained)
        miou[key], val_masks[key] = validation_scores(variant, samples, label_map, num_classes)
        del variant
        gc.collect()
    for key in VARIANTS:
        valid = truth != 255
        res["accuracy"][key] = {
            "picture_vs_a": equal_fraction(picture_masks[key], picture_masks["a"]),
            "picture_vs_a_prime": equal_fraction(picture_masks[key], picture_masks["a'"]),
            "picture_accuracy": float((picture_masks[key] == truth)[valid].mean()),
            "val_vs_a": equal_fraction(val_masks[key], val_masks["a"]),
            "val_vs_b": equal_fraction(val_masks[key], val_masks["b"]),
            "miou": miou[key],
        }
    for key in SERVED:
        print(f"[{algorithm} {key}] through the server", flush=True)
        served = serve_and_load(key, fast, jpeg, args, log_dir)
        # The server's answer must be the in-process answer (same code, same single thread per worker).
        served["response_equals_in_process"] = equal_fraction(served.pop("response_mask"), picture_masks[key])
        res["served"][key] = served
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="holds data/ and models/<algorithm>/model")
    parser.add_argument("--algorithms", default="fcn,psp,deeplab")
    parser.add_argument("--serve-crop", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=15.0, help="minimum length of each load run")
    parser.add_argument("--min-requests", type=int, default=4, help="minimum requests per client in a load run")
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--memory-requests", type=int, default=400)
    parser.add_argument("--memory-algorithm", default="fcn")
    parser.add_argument("--memory-precision", default="int8")
    parser.add_argument("--report-only", action="store_true", help="re-render the last run's results/serving.json")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    _reexec_single_threaded()

    from benchmarks.machine_limit import load_results

    limit = load_results()
    if args.report_only:
        results = json.loads(RESULTS.read_text())
        for name, value in results.get("args", {}).items():
            setattr(args, name, value)
        results["verdicts"] = verdicts(results, limit)
        publish("serving", report(results, limit, args), not args.no_record)
        return
    if limit is None or limit["crop"] != args.serve_crop or any("whole" not in m for m in limit["macs"].values()):
        subprocess.run(
            [sys.executable, "-m", "benchmarks.machine_limit", "--crop", str(args.serve_crop), "--no-record"],
            check=True,
            env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")},
        )
        limit = load_results()
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    classes = len(json.loads((args.work / "data" / "classes.json").read_text()))
    jpeg, truth = synthetic_picture(classes)
    log_dir = args.work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    trained_hp = json.loads((args.work / "models" / algorithms[0] / "model" / "hyperparams.json").read_text())
    results: dict[str, Any] = {
        "workers": None,
        "train_crop": trained_hp["crop_size"],
        "trained_note": (args.work / "models" / "NOTE").read_text().strip()
        if (args.work / "models" / "NOTE").exists()
        else "see benchmarks.run_all",
        "validation_images": len(list((args.work / "data" / "validation").iterdir())),
        "models": {},
    }
    for algorithm in algorithms:
        results["models"][algorithm] = run_model(algorithm, args.work, jpeg, truth, args, log_dir)
        results["workers"] = results["models"][algorithm]["served"]["b"]["workers"]
    if args.memory_requests > 0:
        folder = args.work / "serve" / f"{args.memory_algorithm}-{args.serve_crop}"
        print(f"[memory] {args.memory_requests} requests", flush=True)
        results["memory"] = {
            "algorithm": args.memory_algorithm,
            **memory_run(folder, args.memory_precision, jpeg, args.memory_requests, max(1, args.memory_requests // 10)),
        }
    results["verdicts"] = verdicts(results, limit)
    results["args"] = {k: v for k, v in vars(args).items() if k not in ("work", "report_only", "no_record")}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=float))
    publish("serving", report(results, limit, args), not args.no_record)


if __name__ == "__main__":
    main()
