"""NNCF beside the INT8 step's own route (#24): the route the issue asked to weigh, measured on a trained model.

On a trained model folder with its check pictures, side by side in one run:
- ours: the INT8 step as training runs it (gluonseg.int8_job.make_int8_model on a copy of the folder: ONNX
  Runtime's QDQ quantizer with accuracy control by measurement), its kept model in ONNX Runtime and OpenVINO;
- NNCF 2.14.1 (the newest release that installs beside numpy 1.23.5; `make nncf-venv`) on the same ONNX export
  and the same calibration pictures (the step's plan over the job's channels):
  - `nncf.quantize` on the OpenVINO model, every layer, and with the step's ends (first convolution, classifier)
    left out;
  - `nncf.quantize` on the ONNX model (QDQ, runs in ONNX Runtime), with the same two plans;
  - `nncf.quantize_with_accuracy_control` on the OpenVINO model, held to the step's bar (pixels of the check
    pictures equal to MXNet FP32's, at most 0.5 points below FP32's own), the check pictures as its
    validation set.
Each is judged as the step judges (pixels of the check pictures equal to MXNet FP32's, mIoU against their
labels) and timed at 480x480 with every core's thread (median of --runs after warm-up), with the seconds it
took to make. An optional extra, never in CI or the images: NNCF and its dependencies (scikit-learn, pymoo, ...)
are not in requirements.lock.

Run: .venv-nncf/bin/python -m benchmarks.nncf_route --model DIR [--model DIR ...] --data DIR [--runs 5]
     [--work DIR] [--no-record] [--section NAME]
     (DIR of --data: the job's channels; make bench-nncf runs it on make demo's job)
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SIDE = 480


def openvino_runtime_alias() -> None:
    """NNCF 2.14.1 (the last release for numpy < 1.24) imports `openvino.runtime`, which OpenVINO 2026 removed
    (from 2025 on it only re-exported the top-level API): the same alias, made here, before NNCF is imported."""
    import importlib.machinery
    import sys
    import types

    import openvino
    import openvino.opset13

    if "openvino.runtime" in sys.modules:
        return
    alias = types.ModuleType("openvino.runtime")
    alias.__dict__.update({k: v for k, v in vars(openvino).items() if not k.startswith("__")})
    alias.__spec__ = importlib.machinery.ModuleSpec("openvino.runtime", None)
    alias.opset13 = openvino.opset13
    sys.modules["openvino.runtime"] = alias
    sys.modules["openvino.runtime.opset13"] = openvino.opset13


def masks(logits: Callable[[np.ndarray], np.ndarray], items: Sequence[Any]) -> list[np.ndarray]:
    """The masks of `items` from `logits` ((3, H, W) in, (classes, H, W) out), cut to each picture's part."""
    from gluonseg.inference.int8_onnx import _mask

    return [_mask(logits(item.data), item) for item in items]


def compiled_logits(compiled: Any) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO compiled model (what NNCF validates) as a logits function."""
    return lambda data: np.asarray(compiled(data[None])[0])[0]


def ov_fp32_convolutions(model: Any) -> set[str]:
    """The convolutions of an NNCF OpenVINO model that run in FP32, by their ONNX node names: an INT8 one reads
    an 8-bit constant (through Convert and Multiply) and its input through a FakeQuantize."""

    def source(value: Any, passing: tuple[str, ...]) -> Any:
        node = value.get_node()
        while node.get_type_name() in passing and node.get_input_size():
            node = node.input_value(0).get_node()
        return node

    found = set()
    for op in model.get_ops():
        if op.get_type_name() != "Convolution":
            continue
        weights = source(op.input_value(1), ("Multiply", "Subtract", "Convert", "Reshape"))
        data = source(op.input_value(0), ("MaxPool", "Reshape", "Transpose", "Pad", "Concat"))
        int8 = weights.get_output_element_type(0).get_type_name() in ("i8", "u8")
        if not int8 or data.get_type_name() != "FakeQuantize":
            found.add(op.get_friendly_name().split("/")[0])
    return found


def onnx_fp32_convolutions(model: Any) -> set[str]:
    """The Conv nodes of a QDQ ONNX model whose weights do not come through DequantizeLinear."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name for node in model.graph.node if node.op_type == "Conv" and node.input[1] not in dequantized}


def fp32_share(fp32: set[str], macs: dict[str, int]) -> str:
    return f"{len(fp32)} conv FP32, {sum(macs.get(n, 0) for n in fp32) / sum(macs.values()):.1%} of MACs"


def judge(found: list[np.ndarray], reference: list[np.ndarray], checks: Sequence[Any], classes: int) -> dict[str, Any]:
    from gluonseg.inference.int8_onnx import agreement, mean_iou

    return {"agreement": agreement(found, reference), "miou": mean_iou(found, checks, classes)}


def timed(network: Any, runs: int) -> float:
    from gluonseg.inference.backend_choice import median_seconds

    return median_seconds(network, np.random.default_rng(0).standard_normal((3, SIDE, SIDE)).astype(np.float32), runs)


def ours(model: Path, validation: list[Any], train: list[Any], work: Path) -> tuple[Path, dict[str, Any], float]:
    """The INT8 step on a copy of the folder: (its INT8 ONNX, its record, its seconds)."""
    from benchmarks.common.models import copy_for_serving
    from gluonseg.inference.int8_onnx import INT8_ONNX, read_int8_record
    from gluonseg.int8_job import make_int8_model

    copy = copy_for_serving(model, work / "ours")
    began = time.perf_counter()
    if not make_int8_model(copy, validation, train):
        raise SystemExit(f"{model}: too few pictures for the INT8 step")
    seconds = time.perf_counter() - began
    record = read_int8_record(copy)
    if not record or not record.get("kept"):
        raise SystemExit(f"the INT8 step kept no model for {model}: {record and record.get('why_not')}")
    return copy / INT8_ONNX, record, seconds


def measure(model: Path, data: Path, work: Path, runs: int) -> dict[str, Any]:
    openvino_runtime_alias()
    import nncf
    import onnx
    import openvino as ov

    from gluonseg.artifacts import read_model_dir
    from gluonseg.data.channels import SPLITS, pair_channel
    from gluonseg.data.check_set import plan_pictures, read_check_set
    from gluonseg.inference.int8_control import conv_macs, end_convolutions
    from gluonseg.inference.int8_onnx import MIN_AGREEMENT, canvases, prepare, reference_masks, session_masks
    from gluonseg.inference.onnx_backends import OnnxRuntimeNetwork, OpenVinoNetwork, threads
    from gluonseg.inference.onnx_export import ONNX_FILE, export_onnx
    from gluonseg.inference.onnx_ops import INPUT_NAME
    from gluonseg.int8_job import calibration_pictures

    artifact = read_model_dir(model)
    classes = artifact.num_classes
    check = read_check_set(model)
    if not check:
        raise SystemExit(f"{model} keeps no check pictures: train it with this version first")
    checks = canvases(check)
    reference = reference_masks(artifact, checks)
    validation, train = (pair_channel(*(data / f for f in SPLITS[split])) for split in ("validation", "train"))
    calibration = canvases(calibration_pictures(plan_pictures(validation, train)))  # the step's own
    rows: list[dict[str, Any]] = []

    def row(route: str, runtime: str, plan: str, found: list[np.ndarray], made_s: float, network: Any) -> None:
        rows.append(
            {
                "route": route,
                "runtime": runtime,
                "plan": plan,
                **judge(found, reference, checks, classes),
                "made_s": made_s,
                "network_s": timed(network, runs),
            }
        )
        print(rows[-1], flush=True)

    int8_ours, record, ours_s = ours(model, validation, train, work)
    plan = f"{record['calibration_method']}, FP32: the ends" + "".join(f" + {g}" for g in record["fp32_groups"])
    plan += f" ({record['fp32_mac_share']:.1%} of MACs)"
    row(
        "ours (ORT QDQ + control)",
        "ONNX Runtime",
        plan,
        session_masks(int8_ours, checks),
        ours_s,
        OnnxRuntimeNetwork(int8_ours, prefer_gpu=False, precision="int8"),
    )
    network = OpenVinoNetwork(int8_ours, "int8")
    row("ours (ORT QDQ + control)", "OpenVINO", plan, masks(network.logits, checks), ours_s, network)

    export_onnx(model, work)
    fp32 = work / "prepared.onnx"  # the step's input: nodes named, BatchNorm folded (OpenVINO folds it too)
    prepare(work / ONNX_FILE, fp32)
    graph = onnx.load(str(fp32), load_external_data=False)
    ends, macs = end_convolutions(graph, classes), conv_macs(graph)
    del graph
    core = ov.Core()
    network = OpenVinoNetwork(fp32, "fp32")
    row("none (FP32)", "OpenVINO", "FP32", masks(network.logits, checks), 0.0, network)

    count = len(calibration)
    ov_dataset = nncf.Dataset(calibration, lambda item: item.data[None])
    onnx_dataset = nncf.Dataset(calibration, lambda item: {INPUT_NAME: item.data[None]})
    # OpenVINO names a convolution by its ONNX output (the step names nodes so), "/WithoutBiases" once split.
    ov_ends = nncf.IgnoredScope(patterns=[rf"^{re.escape(name)}(/.*)?$" for name in ends], validate=False)
    plans = (("every layer", None), ("the ends FP32", ov_ends))

    def saved_ov(quantized: Any, name: str) -> OpenVinoNetwork:
        path = work / f"{name}.xml"
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        return OpenVinoNetwork(path, "int8")

    for number, (name, ignored) in enumerate(plans):
        began = time.perf_counter()
        quantized = nncf.quantize(core.read_model(str(fp32)), ov_dataset, subset_size=count, ignored_scope=ignored)
        made = time.perf_counter() - began
        network = saved_ov(quantized, f"nncf-ov-{number}")
        plan = f"{name} ({fp32_share(ov_fp32_convolutions(quantized), macs)})"
        row("NNCF quantize", "OpenVINO", plan, masks(network.logits, checks), made, network)

    for number, (name, ignored) in enumerate(plans):
        scope = ignored and nncf.IgnoredScope(names=ends)
        began = time.perf_counter()
        quantized_onnx = nncf.quantize(onnx.load(str(fp32)), onnx_dataset, subset_size=count, ignored_scope=scope)
        made = time.perf_counter() - began
        path = work / f"nncf-onnx-{number}.onnx"
        onnx.save(quantized_onnx, str(path))
        row(
            "NNCF quantize (ONNX)",
            "ONNX Runtime",
            f"{name} ({fp32_share(onnx_fp32_convolutions(quantized_onnx), macs)})",
            session_masks(path, checks),
            made,
            OnnxRuntimeNetwork(path, prefer_gpu=False, precision="int8"),
        )

    # The check pictures with MXNet FP32's masks: NNCF's metric is the step's agreement, its bar the step's.
    pairs = list(zip(checks, reference))

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        items = list(items)
        found = masks(compiled_logits(compiled), [c for c, _ in items])
        equal = [float((m == r).mean()) for m, (_, r) in zip(found, items)]
        sizes = [m.size for m in found]
        return float(np.dot(equal, sizes) / max(1, sum(sizes))), equal

    began = time.perf_counter()
    controlled = nncf.quantize_with_accuracy_control(
        core.read_model(str(fp32)),
        calibration_dataset=ov_dataset,
        validation_dataset=nncf.Dataset(pairs, lambda pair: pair[0].data[None]),
        validation_fn=validate,
        max_drop=1.0 - MIN_AGREEMENT,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=count,
    )
    made = time.perf_counter() - began
    network = saved_ov(controlled, "nncf-ov-control")
    row(
        "NNCF quantize_with_accuracy_control",
        "OpenVINO",
        f"bar {MIN_AGREEMENT:.1%} ({fp32_share(ov_fp32_convolutions(controlled), macs)})",
        masks(network.logits, checks),
        made,
        network,
    )
    return {
        "rows": rows,
        "fp32_miou": judge(reference, reference, checks, classes)["miou"],
        "check": len(checks),
        "pixels": sum(c.height * c.width for c in checks),
        "calibration": count,
        "threads": threads(),
        "versions": {"nncf": nncf.__version__, "openvino": ov.__version__},
        "model": f"{artifact.hp.algorithm} {artifact.hp.backbone}, {classes} classes",
    }


def report(result: dict[str, Any], model: Path, runs: int) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    lines = [
        f"Model: {model} ({result['model']}; check pictures: {result['check']}, {result['pixels']:,} pixels; FP32 "
        f"mIoU on them {result['fp32_miou']:.4f}). Calibration: the step's {result['calibration']} pictures for "
        f"every route. Network: {SIDE}x{SIDE}, {result['threads']} threads, median of {runs}. {versions}.",
        "",
        "| route | runtime | plan | check pixels as MXNet FP32 | mIoU | made in s | network s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        miou = f"{r['miou']:.4f}" if r["miou"] is not None else "-"
        lines.append(
            f"| {r['route']} | {r['runtime']} | {r['plan']} | {r['agreement']:.3%} | {miou} | {r['made_s']:.1f} | "
            f"{r['network_s']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    from benchmarks.common.report import machine, publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="a trained folder; repeatable")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--section", default="nncf route")
    args = parser.parse_args()
    logging.getLogger("nncf").setLevel(logging.WARNING)
    print(machine(), flush=True)
    tables = []
    with tempfile.TemporaryDirectory() as scratch:
        for number, model in enumerate(args.model):
            work = (args.work or Path(scratch)) / f"{number}-{model.name}"
            work.mkdir(parents=True, exist_ok=True)
            tables.append(report(measure(model, args.data, work, args.runs), model, args.runs))
    tables.append(
        "made in s: ours, the whole INT8 step as training runs it (export, MXNet FP32's masks, calibration, every "
        "attempt and check); NNCF, its call alone, on an export made before."
    )
    publish(args.section, "\n\n".join(tables), record=not args.no_record)


if __name__ == "__main__":
    main()
