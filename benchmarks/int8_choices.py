"""The INT8 step's choices, measured (#24): calibration method, number of calibration pictures, per-channel weights.

On a trained model folder with its check pictures (training keeps them), each variant is quantized by the INT8
step's own functions (gluonseg.inference.int8_onnx: calibrate, quantize) with its first plan, the first
convolution and the classifier in FP32, and judged as the step judges: pixels of the check pictures equal to
MXNet FP32's, and mIoU against their labels, FP32 and INT8 side by side. Also timed: the calibration, and the
INT8 model in ONNX Runtime on a 480x480 input (median of --runs). Calibration pictures: the validation pictures
that are not check pictures, then training pictures, at native scale, as the step takes them.

Run: .venv/bin/python -m benchmarks.int8_choices --model DIR --data DIR [--runs 3] [--no-record] [--section NAME]
     (DIR of --data: the job's channels, train/ and validation/)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("MinMax", "Entropy", "Percentile")
COUNTS = (2, 4, 8, 16, 32)
SIDE = 480


def calibration_pictures(data: Path, check_sources: set[str], count: int) -> list[Any]:
    """`count` pictures: the validation ones that are not check pictures, then training ones (check_sources:
    the check pictures' channel paths, "validation/img_00065.jpg")."""
    from gluonseg.data.check_set import CheckPicture
    from gluonseg.data.images import load_image

    validation = [p for p in sorted((data / "validation").glob("*.jpg")) if f"validation/{p.name}" not in check_sources]
    paths = (validation + sorted((data / "train").glob("*.jpg")))[:count]
    return [CheckPicture(p.name, load_image(p, str(p)), None) for p in paths]


def onnxruntime_seconds(path: Path, runs: int) -> float:
    from gluonseg.inference.backend_choice import median_seconds
    from gluonseg.inference.onnx_backends import OnnxRuntimeNetwork

    network = OnnxRuntimeNetwork(path, prefer_gpu=False, precision="int8")
    return median_seconds(network, np.random.default_rng(0).standard_normal((3, SIDE, SIDE)).astype(np.float32), runs)


def measure(model: Path, data: Path, runs: int) -> dict[str, Any]:
    import onnx

    from gluonseg.artifacts import read_model_dir
    from gluonseg.data.check_set import read_check_record, read_check_set
    from gluonseg.inference import int8_onnx as step
    from gluonseg.inference.int8_control import end_convolutions
    from gluonseg.inference.onnx_export import ONNX_FILE, export_onnx

    artifact = read_model_dir(model)
    check = read_check_set(model)
    if not check:
        raise SystemExit(f"{model} keeps no check pictures: train it with this version first")
    check_sources = {item["from"] for item in read_check_record(model)["pictures"]}
    checks = step.canvases(check)
    reference = step.reference_masks(artifact, checks)
    fp32_miou = step.mean_iou(reference, checks, artifact.num_classes)
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        export_onnx(model, scratch)
        prepared, candidate = scratch / "prepared.onnx", scratch / "int8.onnx"
        step.prepare(scratch / ONNX_FILE, prepared)
        ends = end_convolutions(onnx.load(str(prepared), load_external_data=False), artifact.num_classes)
        plans = [(method, 16, True) for method in METHODS]
        plans += [("MinMax", count, True) for count in COUNTS if count != 16]
        plans.append(("MinMax", 16, False))
        ranges_cache: dict[tuple[str, int], tuple[Any, float, int]] = {}
        for method, count, per_channel in plans:
            if (method, count) not in ranges_cache:
                pictures = step.canvases(calibration_pictures(data, check_sources, count))
                began = time.perf_counter()
                ranges = step.calibrate(prepared, pictures, scratch, method)
                ranges_cache[(method, count)] = (ranges, time.perf_counter() - began, len(pictures))
            ranges, calibration_s, used = ranges_cache[(method, count)]
            step.quantize(prepared, candidate, ranges, ends, per_channel=per_channel)
            masks = step.session_masks(candidate, checks)
            row = {
                "method": method,
                "pictures": used,
                "per_channel": per_channel,
                "agreement": step.agreement(masks, reference),
                "miou": step.mean_iou(masks, checks, artifact.num_classes),
                "calibration_s": calibration_s,
                "network_s": onnxruntime_seconds(candidate, runs),
            }
            rows.append(row)
            print(row, flush=True)
    return {
        "rows": rows,
        "fp32_miou": fp32_miou,
        "check": len(checks),
        "pixels": sum(c.height * c.width for c in checks),
    }


def report(result: dict[str, Any], model: Path, runs: int) -> str:
    lines = [
        f"Model: {model} (its check pictures: {result['check']}, {result['pixels']:,} pixels; FP32 mIoU on them "
        f"{result['fp32_miou']:.4f}). Plan: the first convolution and the classifier in FP32. Network: the INT8 model "
        f"in ONNX Runtime at {SIDE}x{SIDE}, median of {runs}.",
        "",
        "| calibration | pictures | weights | check pixels as MXNet FP32 | INT8 mIoU | change (points) "
        "| calibration s | network s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        weights = "per channel" if row["per_channel"] else "per tensor"
        change = 100 * (row["miou"] - result["fp32_miou"]) if row["miou"] is not None else float("nan")
        lines.append(
            f"| {row['method']} | {row['pictures']} | {weights} | {row['agreement']:.3%} | {row['miou']:.4f} | "
            f"{change:+.2f} | {row['calibration_s']:.1f} | {row['network_s']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    from benchmarks.common.report import machine, publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--section", default="int8 choices")
    args = parser.parse_args()
    print(machine(), flush=True)
    result = measure(args.model, args.data, args.runs)
    publish(args.section, report(result, args.model, args.runs), record=not args.no_record)


if __name__ == "__main__":
    main()
