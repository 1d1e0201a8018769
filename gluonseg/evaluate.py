"""`gluonseg evaluate`: score a model folder on a folder of images and masks, as a person would check it.

The numbers are the training job's (`validation:pixel_accuracy`, `validation:mIOU`: one confusion
matrix summed over every pixel of every image, gluonseg.metrics), but every image goes whole through
the Predictor, the code path behind the server and batch transform. So this is what the deployed
model scores, not what the last validation pass measured on centre crops.

Data rules are training's: images pair with masks by relative base name (`pair_channel`), every mask
is scanned before the model is loaded (`scan_masks`: unreadable files, sizes, values outside the
classes after the label map, all named at once), and images are read on their stored pixel grid
(EXIF orientation not applied), since that is the grid the masks are drawn on.

Next to each class's IoU the report gives its share of the evaluated masks' labelled pixels and, when the
model folder has `class_stats.json`, its share of the training masks and the loss weight it trained with.
A class under 1% of the evaluated pixels is marked rare (`*`), in the table and on the confusion matrix.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.data.channels import Sample, pair_channel, scan_masks
from gluonseg.data.images import load_image, load_mask
from gluonseg.data.label_map import MAX_LABEL_MAP_BYTES, LabelMap, parse_label_map
from gluonseg.environment import read_json_file
from gluonseg.inference.windows import default_stride
from gluonseg.metrics import ConfusionMatrix
from gluonseg.progress import WindowProgress, with_progress
from gluonseg.training.class_weights import RARE_SHARE

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CONFUSION_PLOT_FILE = "confusion_matrix.png"


def read_label_map_file(path: Path | None, num_classes: int | None = None) -> LabelMap:
    """The label map in a JSON file (`{"scale": N}` or `{"map": {...}}`); identity without one."""
    if path is None:
        return LabelMap.identity()
    data = read_json_file(path, "label map", max_bytes=MAX_LABEL_MAP_BYTES)
    return parse_label_map(data, str(path), num_classes)


def describe_inference(predictor: Any) -> str:
    """The scale and test-time augmentation a Predictor runs, in one line (evaluate prints it)."""
    scale = predictor.scale
    if scale == "slide":
        stride = predictor.slide_stride or default_stride(predictor.slide_window)
        size = f"long side {predictor.slide_long_side}" if predictor.slide_long_side else "own size"
        scale += f" ({size}, window {predictor.slide_window}, stride {stride})"
    elif scale == "native":
        scale += f" (up to {predictor.native_max_pixels} pixels)"
    return f"{scale}, TTA {predictor.tta}, {predictor.backend} {predictor.precision}"


def _unique_names(names: list[str]) -> list[str]:
    """Class names as JSON keys: a repeated name gets its class id appended, so no class is lost."""
    seen = {n for n in names if names.count(n) == 1}
    return [n if n in seen else f"{n} ({i})" for i, n in enumerate(names)]


def build_report(
    cm: ConfusionMatrix,
    class_names: list[str],
    model_dir: Path,
    images: int,
    seconds: float,
    class_stats: dict[str, Any] | None = None,
    inference: str = "",
    predict_seconds: float | None = None,
) -> dict:
    """The JSON-ready summary of one evaluation; IoU is null for a class in neither masks nor predictions.

    `class_stats`: the model folder's `class_stats.json` (training pixel shares and weights), if any.
    `inference`: the scale and TTA used (`describe_inference`); `predict_seconds`: the time spent predicting
    (reading the pictures included, loading the model not), for the time per picture."""
    iou = cm.iou_per_class()
    keys = _unique_names(class_names)
    true_pixels = cm.matrix.sum(axis=1)
    share = true_pixels / max(int(true_pixels.sum()), 1)
    stats = class_stats or {}

    def per_class(values: list | None) -> dict[str, Any] | None:
        return None if values is None or len(values) != len(keys) else dict(zip(keys, values))

    return {
        "model_dir": str(model_dir),
        "images": images,
        "labelled_pixels": cm.labelled_pixels,
        "pixel_accuracy": cm.pixel_accuracy(),
        "mIOU": cm.mean_iou(),
        "mIOU_present_classes": None if np.isnan(cm.mean_iou_present()) else cm.mean_iou_present(),
        "class_names": list(class_names),
        "iou_per_class": {k: (None if np.isnan(v) else float(v)) for k, v in zip(keys, iou)},
        "pixel_share_per_class": {k: float(v) for k, v in zip(keys, share)},
        "rare_classes": [k for k, v in zip(keys, share) if 0 < v < RARE_SHARE],
        "rare_share": RARE_SHARE,
        "training_pixel_share_per_class": per_class(stats.get("pixel_share")),
        "class_weights_per_class": per_class(stats.get("weights")),
        "confusion_matrix": cm.matrix.tolist(),
        "seconds": seconds,
        "inference": inference,
        "seconds_per_image": (predict_seconds if predict_seconds is not None else seconds) / max(images, 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """The terminal table: overall scores, then IoU, pixel share (evaluated masks, training masks when known),
    the class weight trained with (when not none) and pixel counts per class; rare classes marked *."""
    names = list(report["iou_per_class"])
    share = report.get("pixel_share_per_class") or {}
    train_share = report.get("training_pixel_share_per_class")
    weights = report.get("class_weights_per_class")
    rare = set(report.get("rare_classes") or ())
    matrix = np.asarray(report["confusion_matrix"], dtype=np.int64)
    width = max([len("class")] + [len(n) for n in names])
    lines = [
        f"model       {report['model_dir']}",
        f"images      {report['images']} ({report['labelled_pixels']} labelled pixels, {report['seconds']:.1f} s)",
        f"inference   {report.get('inference') or 'n/a'}",
        f"time        {report.get('seconds_per_image', float('nan')):.3f} s per picture",
        f"pixel accuracy  {report['pixel_accuracy']:.4f}",
        f"mIOU            {report['mIOU']:.4f}  (mean over all {len(names)} classes, absent ones counting 0)",
        "",
        f"{'id':>3}  {'class':<{width}}  {'IoU':>7}  {'px share':>9}"
        + (f"  {'train share':>11}" if train_share else "")
        + (f"  {'weight':>7}" if weights else "")
        + f"  {'true px':>10}  {'predicted px':>12}",
    ]
    for i, name in enumerate(names):
        value = report["iou_per_class"][name]
        iou = "    n/a" if value is None else f"{value:7.4f}"
        mark = "*" if name in rare else " "
        line = f"{i:>3}{mark} {name:<{width}}  {iou}  {share.get(name, 0.0):9.3%}"
        line += f"  {train_share[name]:11.3%}" if train_share else ""
        line += f"  {weights[name]:7.3g}" if weights else ""
        lines.append(line + f"  {matrix[i].sum():>10}  {matrix[:, i].sum():>12}")
    if rare:
        lines.append(f"* rare: under {report['rare_share']:.0%} of the evaluated masks' labelled pixels")
    return "\n".join(lines)


def _score(predictor: Any, samples: list[Sample], label_map: LabelMap, progress: bool | None) -> ConfusionMatrix:
    cm = ConfusionMatrix(predictor.num_classes)
    for sample in with_progress(samples, len(samples), "evaluate", progress):
        image = load_image(sample.image_path, sample.image_file, apply_exif=False)
        label = label_map.apply(load_mask(sample.mask_path, sample.mask_file))
        with WindowProgress(progress, sample.image_path.name) as windows:
            cm.update(predictor.predict(image, progress=windows).mask, label)
    return cm


def evaluate_folder(
    model_dir: Path,
    images: Path,
    masks: Path,
    label_map_file: Path | None = None,
    out: Path | None = None,
    progress: bool | None = None,
    **inference: Any,
) -> dict[str, Any]:
    """Score the model in `model_dir` on every image/mask pair; returns the report (see `build_report`).

    With `out`, writes OUT/report.json and OUT/confusion_matrix.png. `progress`: True for a tqdm bar,
    False for log lines, None to decide by whether stderr is a terminal. Bad data raises ClientError
    naming the files, before the model is loaded. `inference`: load_predictor's backend, precision,
    calibration_dir, scale, native_max_pixels, slide_*, tta.
    """
    import json

    from gluonseg.artifacts import read_class_stats, read_model_dir
    from gluonseg.inference.loading import load_predictor

    model_dir, images, masks = Path(model_dir), Path(images), Path(masks)
    artifact = read_model_dir(model_dir)  # cheap: the class count for the scan, before the network loads
    label_map = read_label_map_file(label_map_file, artifact.num_classes)
    samples = pair_channel(images, masks)
    scan_masks(samples, label_map, artifact.num_classes, masks.name)
    log.info("evaluating %s on %d image(s) from %s", model_dir, len(samples), images)

    start = time.perf_counter()
    predictor = load_predictor(model_dir, **inference)
    loaded = time.perf_counter()
    cm = _score(predictor, samples, label_map, progress)
    end = time.perf_counter()
    report = build_report(
        cm,
        predictor.class_names,
        model_dir,
        len(samples),
        end - start,
        read_class_stats(model_dir),
        inference=describe_inference(predictor),
        predict_seconds=end - loaded,
    )
    if out is not None:
        from gluonseg.plots import plot_confusion_matrix

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
        plot_confusion_matrix(
            cm.matrix,
            list(report["iou_per_class"]),
            out / CONFUSION_PLOT_FILE,
            rare=[i for i, name in enumerate(report["iou_per_class"]) if name in report["rare_classes"]],
            rare_share=RARE_SHARE,
            title=f"{model_dir.name}: pixel accuracy {report['pixel_accuracy']:.3f}, mIOU {report['mIOU']:.3f}",
        )
        log.info("wrote %s and %s", out / REPORT_FILE, out / CONFUSION_PLOT_FILE)
    return report
