"""An INT8 model made where the data is, and kept only when its masks hold up against FP32's.

`make_int8_onnx(model_dir, calibration, check)` writes `model-int8.onnx` and its record `model-int8-onnx.json`
into the model folder. The model is the folder's ONNX export (gluonseg.inference.onnx_cache) quantized by
ONNX Runtime's static quantizer into QDQ form, which both ONNX Runtime and OpenVINO run with INT8 kernels:
- weights INT8 per output channel (symmetric), activations UINT8 per tensor;
- activation ranges over up to CALIBRATION_PICTURES calibration pictures at native scale, the canvases the server
  feeds the network (gluonseg.inference.geometry.native_canvas), computed once per calibration method (MinMax,
  then Entropy when MinMax's miss the bar) and shared by every attempt;
- accuracy control: the masks on the check pictures (never calibration pictures) are compared with MXNet FP32's,
  and the nodes kept in FP32 are chosen by measurement (gluonseg.inference.int8_control): the ends, then
  each group's sensitivity, then the groups that buy the most agreement per multiply-add, until MIN_AGREEMENT.
  When no plan reaches the bar, no model is written; the record says why, with every attempt's agreement.
  mIoU against the check pictures' labels (when they have them) is recorded for FP32 and INT8 side by side.

The record keeps the SHA-256 of the parameters the model came from: a folder retrained since ignores the file.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.artifacts import ModelArtifact, read_model_dir, versions
from gluonseg.data.check_set import CheckPicture
from gluonseg.errors import ClientError
from gluonseg.inference.geometry import native_canvas
from gluonseg.inference.onnx_ops import INPUT_NAME
from gluonseg.util import params_digest

log = logging.getLogger(__name__)

INT8_ONNX = "model-int8.onnx"
INT8_ONNX_RECORD = "model-int8-onnx.json"
INT8_ONNX_FORMAT = "gluonseg-int8-onnx/1"
MIN_AGREEMENT = 0.995  # the bar serving's `auto` holds every candidate to (gluonseg.inference.backend_choice)
CALIBRATION_PICTURES = 16
CANVAS_MAX_PIXELS = 512 * 512  # calibration and check canvases: the sizes served, bounded to keep this quick
IGNORE = 255


@dataclass(frozen=True)
class Canvas:
    name: str
    data: np.ndarray  # (3, H, W) normalised, padded to a multiple of 8
    height: int  # the picture's part of the canvas
    width: int
    label: np.ndarray | None  # (height, width) uint8, 255 = ignore


def canvases(pictures: Sequence[CheckPicture]) -> list[Canvas]:
    """Native-scale canvases of `pictures`, labels resized (nearest) to the picture's part."""
    from PIL import Image

    found = []
    for item in pictures:
        data, height, width = native_canvas(item.picture, CANVAS_MAX_PIXELS)
        label = item.label
        if label is not None and label.shape != (height, width):
            label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
        found.append(Canvas(item.name, data, height, width, label))
    return found


def int8_onnx_path(artifact: ModelArtifact) -> Path | None:
    """The folder's INT8 model when it was kept and made from these parameters, else None (a warning says why)."""
    path, record = artifact.folder / INT8_ONNX, read_int8_record(artifact.folder)
    if record is None or not record.get("kept") or not path.exists():
        return None
    if record.get("source_sha256") != params_digest(artifact.params_path, "sha256"):
        log.warning("%s was made from other parameters than %s; ignoring it", INT8_ONNX, artifact.params_path.name)
        return None
    return path


def read_int8_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(folder) / INT8_ONNX_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == INT8_ONNX_FORMAT else None


# -- quantizing and judging


class _Reader:
    """ONNX Runtime's calibration data reader over canvases."""

    def __init__(self, items: Sequence[Canvas]) -> None:
        self._items = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        return None if item is None else {INPUT_NAME: item.data[None].astype(np.float32)}


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer warns on the root logger about every BatchNorm it leaves alone; nothing is wrong."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def prepare(fp32_path: Path, out_path: Path) -> None:
    """The export made ready to quantize: every node named (the exporter leaves names empty, and the quantizer
    excludes nodes by name), BatchNorm folded into the convolutions before them, shapes inferred."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    for node in model.graph.node:
        node.name = node.name or node.output[0]
    named = out_path.with_suffix(".named.onnx")
    onnx.save(model, str(named))
    del model
    with _quiet_quantizer():
        quant_pre_process(str(named), str(out_path), skip_symbolic_shape=True)  # H and W are free
    named.unlink()


def calibrate(prepared: Path, calibration: Sequence[Canvas], scratch: Path, method: str = "MinMax") -> Any:
    """Activation ranges of every tensor the quantizer may quantize, from `calibration` (ONNX Runtime's
    calibrator; `method`: MinMax, Entropy or Percentile). Computed once and shared by every attempt."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    # The histogram calibrators print their progress to stdout, which is the training job's log.
    with _quiet_quantizer(), redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory(dir=scratch) as work:
        calibrator = create_calibrator(
            Path(prepared),
            _quantized_op_types(),
            augmented_model_path=str(Path(work) / "augmented.onnx"),
            calibrate_method=CalibrationMethod[method],
        )
        # One picture a pass: the calibrators merge passes, a pass keeps every tensor of its pictures in memory
        # (GBs for 16 pictures at 512x512), and the histogram methods need the tensors of a pass to share a shape.
        for item in calibration:
            calibrator.collect_data(_Reader([item]))
        return calibrator.compute_data()


def quantize(prepared: Path, out_path: Path, ranges: Any, fp32_nodes: Sequence[str], per_channel: bool = True) -> None:
    """QDQ INT8 model of `prepared` at `out_path` from `ranges` (calibrate), `fp32_nodes` left in FP32.

    What ONNX Runtime's quantize_static does after its calibration, so that the attempts share one calibration
    (at 480x480 it is most of an attempt's time)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version

    with _quiet_quantizer():
        model = update_opset_version(load_model_with_shape_infer(Path(prepared)), QuantType.QInt8)
        quantizer = QDQQuantizer(
            model,
            per_channel,
            False,  # reduce_range
            QuantType.QInt8,  # weights
            QuantType.QUInt8,  # activations
            copy.deepcopy(ranges),  # the quantizer may adjust them: every attempt starts from the same ones
            [],  # nodes_to_quantize: all
            list(fp32_nodes),
            _quantized_op_types(),
            {"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        quantizer.quantize_model()
        quantizer.model.save_model_to_file(str(out_path), False)


def _quantized_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _mask(logits: np.ndarray, item: Canvas) -> np.ndarray:
    return logits[:, : item.height, : item.width].argmax(axis=0).astype(np.uint8)


def agreement(masks: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """The share of pixels whose class is the same in `masks` as in `reference`."""
    equal = sum(int((a == b).sum()) for a, b in zip(masks, reference))
    return equal / max(1, sum(m.size for m in masks))


def mean_iou(masks: Sequence[np.ndarray], items: Sequence[Canvas], num_classes: int) -> float | None:
    """mIoU of `masks` against the items' labels (classes present in either), None without labels."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    labelled = False
    for mask, item in zip(masks, items):
        if item.label is None:
            continue
        labelled = True
        keep = item.label != IGNORE
        truth, guess = item.label[keep].astype(np.int64), mask[keep].astype(np.int64)
        inside = truth < num_classes
        confusion += np.bincount(
            truth[inside] * num_classes + guess[inside], minlength=num_classes * num_classes
        ).reshape(num_classes, num_classes)
    if not labelled:
        return None
    hits = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
    present = union > 0
    return float((hits[present] / union[present]).mean()) if present.any() else None


def reference_masks(artifact: ModelArtifact, items: Sequence[Canvas]) -> list[np.ndarray]:
    """MXNet FP32's masks: the reference every backend and precision is held to."""
    from gluonseg.inference.network import MXNetNetwork
    from gluonseg.inference.precision import fp32_network

    network = MXNetNetwork(fp32_network(artifact), artifact.hp.crop_size)
    return [_mask(network.logits(item.data), item) for item in items]


def session_masks(path: Path, items: Sequence[Canvas]) -> list[np.ndarray]:
    """The masks of the ONNX model at `path` in ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [_mask(session.run(None, {INPUT_NAME: item.data[None]})[0][0], item) for item in items]


def make_int8_onnx(
    model_dir: Path,
    calibration: Sequence[CheckPicture],
    check: Sequence[CheckPicture],
    sources: dict[str, str] | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """Quantize, judge and keep (or not) the folder's INT8 model; returns the record written beside it.

    calibration: pictures for the activation ranges; check: other pictures (with labels when known) that
    the INT8 masks are compared on; sources: where each set came from, for the record and the log;
    min_agreement: the bar (auto's, unless a caller asks for another).
    """
    import onnx

    from gluonseg.inference.int8_control import control, conv_macs, end_convolutions, node_groups
    from gluonseg.inference.onnx_cache import existing_export
    from gluonseg.inference.onnx_export import ONNX_FILE, export_onnx

    start = time.perf_counter()
    folder = Path(model_dir)
    artifact = read_model_dir(folder)
    if not calibration or not check:
        raise ClientError("an INT8 model needs calibration pictures and other pictures to check it on")
    calib, checks = canvases(calibration[:CALIBRATION_PICTURES]), canvases(check)
    reference = reference_masks(artifact, checks)
    fp32_miou = mean_iou(reference, checks, artifact.num_classes)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".int8-") as scratch:
        prepared, candidate = Path(scratch) / "prepared.onnx", Path(scratch) / INT8_ONNX
        fp32 = existing_export(artifact)
        if fp32 is None:  # exported here, not into the folder: a 100+ MB FP32 file would double model.tar.gz
            export_onnx(folder, Path(scratch))
            fp32 = Path(scratch) / ONNX_FILE
        prepare(fp32, prepared)
        ranges: dict[str, Any] = {}  # calibration method -> ranges, computed when an attempt first asks
        calibration_seconds: dict[str, float] = {}
        graph = onnx.load(str(prepared), load_external_data=False)
        ends = end_convolutions(graph, artifact.num_classes)
        groups, macs = node_groups(graph, ends), conv_macs(graph)
        del graph
        last: tuple[list[str], str] | None = None

        def measure(fp32_nodes: list[str], method: str) -> dict[str, Any]:
            nonlocal last
            if method not in ranges:
                began = time.perf_counter()
                ranges[method] = calibrate(prepared, calib, Path(scratch), method)
                calibration_seconds[method] = round(time.perf_counter() - began, 1)
                log.info("INT8 calibration (%s, %d pictures): %.1f s", method, len(calib), calibration_seconds[method])
            began = time.perf_counter()
            quantize(prepared, candidate, ranges[method], fp32_nodes)
            last = (list(fp32_nodes), method)
            masks = session_masks(candidate, checks)
            return {
                "agreement": agreement(masks, reference),
                "mIoU": mean_iou(masks, checks, artifact.num_classes),
                "seconds": round(time.perf_counter() - began, 1),
            }

        def logged(attempt: dict[str, Any]) -> None:
            log.info(
                "INT8 attempt (%s, %s; FP32: the ends%s, %.1f%% of the MACs): %.3f%% of check pixels as FP32's",
                attempt["purpose"], attempt["calibration"], "".join(f" + {g}" for g in attempt["fp32_groups"]),
                100 * attempt["fp32_mac_share"], 100 * attempt["agreement"],
            )  # fmt: skip

        outcome = control(ends, groups, macs, measure, min_agreement, log=logged)
        kept = outcome.kept
        if kept is not None:
            if (kept["fp32_nodes"], kept["calibration"]) != last:  # others were measured since
                quantize(prepared, candidate, ranges[kept["calibration"]], kept["fp32_nodes"])
            os.replace(candidate, folder / INT8_ONNX)
    if kept is None:
        (folder / INT8_ONNX).unlink(missing_ok=True)  # an older one would no longer match what was measured
    attempts = outcome.attempts
    record = {
        "format": INT8_ONNX_FORMAT,
        "kept": kept is not None,
        "why_not": None if kept else outcome.why_not,
        "source_params": artifact.params_path.name,
        "source_sha256": params_digest(artifact.params_path, "sha256"),
        "agreement": kept["agreement"] if kept else max(a["agreement"] for a in attempts),
        "min_agreement": min_agreement,
        "mIoU": {"fp32": fp32_miou, "int8": (kept or max(attempts, key=lambda a: a["agreement"]))["mIoU"]},
        "fp32_nodes": kept["fp32_nodes"] if kept else None,
        "fp32_groups": kept["fp32_groups"] if kept else None,
        "fp32_mac_share": kept["fp32_mac_share"] if kept else None,
        "attempts": attempts,
        "sensitivity": outcome.sensitivity,
        "fallback_order": outcome.order,
        "groups": {g: len(nodes) for g, nodes in groups.items()},
        "quantizer": "onnxruntime QDQQuantizer (quantize_static's, one calibration shared by every attempt)",
        "weights": "int8, per output channel, symmetric",
        "activations": "uint8, per tensor",
        "calibration_method": kept["calibration"] if kept else None,
        "calibration_seconds": calibration_seconds,
        "calibration_pictures": [c.name for c in calib],
        "check_pictures": [c.name for c in checks],
        "check_pixels": int(sum(c.height * c.width for c in checks)),
        "sources": dict(sources or {}),
        "versions": versions(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    tmp = folder / f".{INT8_ONNX_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / INT8_ONNX_RECORD)
    if kept:
        log.info("INT8 model kept: %s (%s)", folder / INT8_ONNX, describe_int8(record))
    else:
        log.warning("no INT8 model kept: %s (%s)", record["why_not"], describe_int8(record))
    return record


def quantize_folder(
    model_dir: Path, calibration_dir: Path, num: int = CALIBRATION_PICTURES, check_dir: Path | None = None
) -> dict[str, Any]:
    """`gluonseg quantize --format onnx`: calibrate on the first `num` images of `calibration_dir`; check on
    `check_dir`'s images, else the model's kept check pictures, else `calibration_dir`'s images after the first
    `num`. Never on the calibration pictures themselves: a ClientError when there is nothing else."""
    from gluonseg.data.check_set import read_check_set
    from gluonseg.data.images import load_image
    from gluonseg.inference.precision import IMAGE_SUFFIXES, calibration_image_paths

    def pictures(paths: Sequence[Path]) -> list[CheckPicture]:
        return [CheckPicture(p.name, load_image(p, str(p)), None) for p in paths]

    every = calibration_image_paths(Path(calibration_dir), 1 << 30)
    calibration = every[:num]
    if check_dir is not None:
        check, source = pictures(calibration_image_paths(Path(check_dir), 64)), str(check_dir)
    elif kept := read_check_set(model_dir):
        check, source = kept, "the model's check pictures"
    elif len(every) - len(calibration) >= 2:
        check, source = pictures(every[num : num + 16]), f"{calibration_dir} after the first {num}"
    else:
        raise ClientError(
            f"an INT8 model is checked on pictures it was not calibrated on, and there are none: {calibration_dir} "
            f"holds {len(every)} image(s) ({', '.join(IMAGE_SUFFIXES)}), all used to calibrate, and {model_dir} "
            "keeps no check pictures; give --check DIR, or more images than --num"
        )
    sources = {"calibration": str(calibration_dir), "check": source}
    return make_int8_onnx(Path(model_dir), pictures(calibration), check, sources)


def describe_int8(record: dict[str, Any]) -> str:
    """One line: agreement, mIoU side by side, what stayed FP32, where the pictures came from, the time."""
    miou = record.get("mIoU") or {}
    parts = [f"{100 * record['agreement']:.2f}% of {record['check_pixels']} check pixels as MXNet FP32"]
    if miou.get("fp32") is not None and miou.get("int8") is not None:
        parts.append(f"mIoU {miou['fp32']:.4f} FP32 vs {miou['int8']:.4f} INT8")
    parts.append(f"{len(record['attempts'])} attempt(s)")
    sources = record.get("sources") or {}
    parts.append(
        f"calibrated on {len(record['calibration_pictures'])} {sources.get('calibration', '')} picture(s), "
        f"checked on {len(record['check_pictures'])} {sources.get('check', '')} picture(s)".replace("  ", " ")
    )
    parts.append(f"{record['seconds']} s")
    return ", ".join(parts)
