"""Serving backends side by side (#13, #24): MXNet FP32 / INT8 / BF16, ONNX Runtime FP32 / INT8, OpenVINO FP32 / BF16 /
INT8.

For FCN, PSP and DeepLabV3 on ResNet-50, the models benchmarks.run_all trains on the generated dataset
(crop 128; trained here first when the work folder has none), every backend x precision this machine
runs, in one run:
- network: one forward pass on a 480x480 input, in process, with every core's thread (median of
  --runs after a warm-up), as the issue's table measures it;
- server: requests/s through the real `serve` (nginx + gunicorn, one worker per core, native scale) on
  the generated 800x600 JPEG, with as many clients as workers, for --seconds; ratio to MXNet FP32;
- accuracy: pixels equal to MXNet FP32's mask on that picture and on the generated validation set, and
  validation mIoU (all classes) against MXNet FP32's;
- auto: what `GLUONSEG_BACKEND=auto` chooses for the model on this machine (it measures on its own).
INT8 (MXNet) uses `gluonseg quantize`'s files, calibrated on the first 10 validation images; INT8 (OpenVINO, ONNX
Runtime) the QDQ model-int8.onnx of `gluonseg quantize --format onnx`, calibrated on the first half of the validation
images and checked on the other half (gluonseg.inference.int8_onnx; its record's agreement is on that half).

Run: .venv/bin/python -m benchmarks.backends [--work DIR] [--algorithms fcn,psp,deeplab] [--seconds 20]
     [--runs 5] [--no-record] [--section NAME] [--model DIR --data DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.util import available_cpus

VARIANTS = (
    ("mxnet", "fp32"),
    ("mxnet", "int8"),
    ("mxnet", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)
NETWORK_SIZE = 480


def ensure_models(work: Path, algorithms: list[str]) -> tuple[Path, dict[str, Path]]:
    from benchmarks.run_all import TRAIN_HP, ensure_dataset, train_model

    data = work / "data"
    ensure_dataset(data, quick=False)
    models = {}
    for algorithm in algorithms:
        dest = work / "models" / algorithm / "model"
        if not (dest / "model_best.params").exists():
            train_model(algorithm, data, dest, 6, TRAIN_HP["crop_size"])
        models[algorithm] = dest
    return data, models


def serving_copy(model: Path, dest: Path, data: Path) -> Path:
    """The model's files alone (no export or choice kept from earlier runs), with both INT8 exports."""
    from gluonseg.inference.int8_onnx import quantize_folder
    from gluonseg.inference.precision import export_int8

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("hyperparams.json", "model_best.params"):
        shutil.copyfile(model / name, dest / name)
    export_int8(dest, data / "validation", 10)
    half = len(list((data / "validation").glob("*.jpg"))) // 2
    record = quantize_folder(dest, data / "validation", half)
    print(f"INT8 ONNX: kept {record['kept']}, {record['agreement']:.4%} of the held-out pixels", flush=True)
    return dest


def network_seconds(predictor: Any, runs: int) -> float:
    from gluonseg.inference.backend_choice import median_seconds

    data = np.random.default_rng(0).standard_normal((3, NETWORK_SIZE, NETWORK_SIZE)).astype(np.float32)
    return median_seconds(predictor.network, data, runs)


def masks(predictor: Any, pictures: list[np.ndarray]) -> list[np.ndarray]:
    return [predictor.predict_mask(p) for p in pictures]


def miou(predicted: list[np.ndarray], truths: list[np.ndarray], classes: int) -> float:
    from gluonseg.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(classes)
    for p, t in zip(predicted, truths):
        matrix.update(p, t)
    return matrix.mean_iou()


def equal(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return sum(int((x == y).sum()) for x, y in zip(a, b)) / sum(x.size for x in a)


def measure_model(algorithm: str, model: Path, data: Path, seconds: float, runs: int) -> dict[str, Any]:
    from benchmarks.common.load import run_load
    from benchmarks.common.pictures import synthetic_picture
    from benchmarks.common.server import Server
    from gluonseg.codecs.decode import decode_image
    from gluonseg.data.images import load_image, load_mask
    from gluonseg.errors import ClientError
    from gluonseg.inference.loading import load_predictor

    classes = int(json.loads((model / "hyperparams.json").read_text())["num_classes"])
    body, _ = synthetic_picture(classes)
    picture = decode_image(body, "image/jpeg")
    names = sorted(p.stem for p in (data / "validation").iterdir())
    images = [load_image(data / "validation" / f"{n}.jpg", n) for n in names]
    truths = [load_mask(data / "validation_annotation" / f"{n}.png", n) for n in names]
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}
    for backend, precision in VARIANTS:
        try:
            predictor = load_predictor(model, backend=backend, precision=precision)
        except ClientError as exc:  # no INT8 model kept for this one
            print(f"{algorithm}: {backend} {precision} not available: {exc}", flush=True)
            continue
        if (predictor.backend, predictor.precision) != (backend, precision):
            print(f"{algorithm}: {backend} {precision} does not run here; skipped", flush=True)
            continue
        row: dict[str, Any] = {"backend": backend, "precision": precision}
        row["network_s"] = network_seconds(predictor, runs)
        picture_mask, validation_masks = masks(predictor, [picture]), masks(predictor, images)
        if not reference:
            reference = {"picture": picture_mask, "validation": validation_masks}
        row["picture_equal"] = equal(picture_mask, reference["picture"])
        row["validation_equal"] = equal(validation_masks, reference["validation"])
        row["miou"] = miou(validation_masks, truths, classes)
        del predictor
        gc.collect()
        server = Server(model, workers=available_cpus(), GLUONSEG_BACKEND=backend, GLUONSEG_PRECISION=precision)
        server.start(timeout=600)
        try:
            run_load(server.url, [body], clients=1, max_requests=2)  # warm every worker's first shape
            load = run_load(server.url, [body], clients=available_cpus(), seconds=seconds, min_requests=4)
        finally:
            server.stop()
        if load.errors:
            raise RuntimeError(f"{algorithm} {backend} {precision}: {load.failure}")
        row["rps"], row["requests"] = load.rps, load.requests
        rows.append(row)
        print(f"{algorithm}: {row}", flush=True)
    auto = load_predictor(model, backend="auto")
    return {"algorithm": algorithm, "rows": rows, "auto": [auto.backend, auto.precision]}


RUN_ALL_MODELS = "Models: ResNet-50, trained by benchmarks.run_all on the generated dataset (crop 128; 5 classes)"


def report(results: list[dict[str, Any]], seconds: float, runs: int, models: str = RUN_ALL_MODELS) -> str:
    workers = available_cpus()
    lines = [
        f"{models}. Network: "
        f"one forward pass at {NETWORK_SIZE}x{NETWORK_SIZE}, in process, {workers} threads, median of {runs}. Server: "
        f"`serve` (nginx + gunicorn), {workers} workers x 1 thread, native scale, the generated 800x600 JPEG, "
        f"{workers} clients for {seconds:.0f} s. Equal pixels and mIoU against MXNet FP32 on that picture and on "
        "the validation pictures. MXNet INT8: `gluonseg quantize` on the first 10 validation images; OpenVINO and "
        "ONNX Runtime INT8: `gluonseg quantize --format onnx` on the first half, checked on the other half.",
        "",
        "| model | backend | precision | network at 480² (s) | vs MXNet FP32 | server req/s (n) | vs MXNet FP32 "
        "| picture: = MXNet FP32 | validation: = MXNet FP32 | validation mIoU | mIoU change (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        base = result["rows"][0]
        for row in result["rows"]:
            lines.append(
                f"| {result['algorithm']} | {row['backend']} | {row['precision']} | {row['network_s']:.3f} | "
                f"{base['network_s'] / row['network_s']:.2f}x | {row['rps']:.2f} ({row['requests']}) | "
                f"{row['rps'] / base['rps']:.2f}x | {row['picture_equal']:.2%} | {row['validation_equal']:.2%} | "
                f"{row['miou']:.4f} | {100 * (row['miou'] - base['miou']):+.2f} |"
            )
    lines.append("")
    for result in results:
        rows = result["rows"]
        faithful = [r for r in rows if r["validation_equal"] >= 0.995 and r["picture_equal"] >= 0.995]
        best = max(faithful, key=lambda r: r["rps"])
        lines.append(
            f"- {result['algorithm']}: `auto` chose {' '.join(result['auto'])}; the fastest through the server with "
            f">= 99.5% equal pixels is {best['backend']} {best['precision']}, {best['rps'] / rows[0]['rps']:.2f}x "
            "MXNet FP32's requests/s."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gluonseg-bench")
    parser.add_argument("--algorithms", default="fcn,psp,deeplab")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--model", type=Path, help="measure this model folder (with --data, its dataset) instead")
    parser.add_argument("--data", type=Path, help="the dataset of --model (validation, validation_annotation)")
    parser.add_argument(
        "--section", default="backends", help="BENCHMARKS.md section to write (one per CPU kind: another CPU's stays)"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))  # before MXNet is imported: every core
    from benchmarks.common.report import publish

    if args.model is not None:
        if args.data is None:
            parser.error("--model needs --data")
        algorithm = json.loads((args.model / "hyperparams.json").read_text())["algorithm"]
        algorithms, data, models = [algorithm], args.data, {algorithm: args.model}
    else:
        algorithms = args.algorithms.split(",")
        data, models = ensure_models(args.work, algorithms)
    results = []
    for algorithm in algorithms:
        model = serving_copy(models[algorithm], args.work / "backends" / algorithm / "model", data)
        results.append(measure_model(algorithm, model, data, args.seconds, args.runs))
    models_note = RUN_ALL_MODELS
    if args.model is not None:
        hp = json.loads((args.model / "hyperparams.json").read_text())
        count = len(list((data / "validation").glob("*.jpg")))
        models_note = (
            f"Model: {hp['algorithm']} on {hp['backbone']} from {args.model} (crop {hp['crop_size']}, "
            f"{hp['num_classes']} classes), its dataset's {count} validation pictures"
        )
    publish(args.section, report(results, args.seconds, args.runs, models_note), record=not args.no_record)


if __name__ == "__main__":
    main()
