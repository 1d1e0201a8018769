"""Inference parity: the serving Predictor against the training's whole-image validation, on one model.

The Predictor at native scale (the default) runs the whole image at its own size through a graph compiled
for its shape; at crop scale it resizes the short side to crop_size and averages crop-sized tiles.
Training's whole-image validation (validation_mini_batch_size=1) runs the non-hybridized network, aux head
and all, through GluonCV's `predict` at the image's own resolution. All are scored with the same confusion
matrix on every validation image; the fraction of pixels where each Predictor mask agrees with the
whole-image one is reported too.
Trains nothing: point it at a trained model folder and the dataset it was trained on.

Run: .venv/bin/python -m benchmarks.inference_parity --model-dir M --data DIR [--limit N] [--no-record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mxnet as mx
import numpy as np

from benchmarks.common.report import publish
from gluonseg.artifacts import read_model_dir
from gluonseg.data.channels import SPLITS, pair_channel
from gluonseg.data.images import load_image, load_mask
from gluonseg.data.label_map import load_label_map
from gluonseg.data.transforms import normalize
from gluonseg.inference.geometry import SCALES
from gluonseg.inference.loading import load_predictor
from gluonseg.metrics import ConfusionMatrix
from gluonseg.models import load_trained_network
from gluonseg.training.validation import whole_image_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="holds validation/ and validation_annotation/")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N validation images")
    parser.add_argument("--no-record", action="store_true", help="print the table but leave BENCHMARKS.md alone")
    args = parser.parse_args()

    artifact = read_model_dir(args.model_dir)
    hp = artifact.hp
    image_dir, mask_dir = SPLITS["validation"]
    samples = pair_channel(args.data / image_dir, args.data / mask_dir)[: args.limit]
    label_map_dir = args.data / "label_map"
    label_map = load_label_map(label_map_dir if label_map_dir.is_dir() else None, "validation")

    predictors = {scale: load_predictor(args.model_dir, scale=scale) for scale in SCALES}
    # As training validates: the whole network from the file (aux head included), not hybridized.
    reference = load_trained_network(
        artifact.params_path, hp.algorithm, hp.backbone, artifact.num_classes, hp.crop_size, hp.base_size
    )

    scores = {name: ConfusionMatrix(artifact.num_classes) for name in (*SCALES, "whole")}
    seconds = dict.fromkeys(scores, 0.0)
    equal = dict.fromkeys(SCALES, 0)
    pixels = 0
    for sample in samples:
        # Masks are drawn on the stored pixel grid, so no EXIF rotation (as the training loader does).
        image = load_image(sample.image_path, str(sample.image_path), apply_exif=False)
        mask = label_map.apply(load_mask(sample.mask_path, str(sample.mask_path)))
        start = time.perf_counter()
        logits = whole_image_logits(reference, mx.nd.array(normalize(image)[None]))
        ref = logits.argmax(axis=1).asnumpy()[0].astype(np.uint8)
        seconds["whole"] += time.perf_counter() - start
        scores["whole"].update(ref, mask)
        pixels += ref.size
        for scale, predictor in predictors.items():
            start = time.perf_counter()
            pred = predictor.predict_mask(image)
            seconds[scale] += time.perf_counter() - start
            scores[scale].update(pred, mask)
            equal[scale] += int((pred == ref).sum())

    n = max(len(samples), 1)
    labels = {
        "native": "Predictor, native scale (default: whole image, graph compiled for its shape)",
        "crop": "Predictor, crop scale (short side to crop_size, tiles)",
        "whole": "whole image, as training validates (`predict`, native size, not hybridized)",
    }
    rows = [
        f"| {labels[name]} | {cm.mean_iou():.4f} | {cm.pixel_accuracy():.4f} | {seconds[name] / n:.3f} | "
        + (f"{equal[name] / max(pixels, 1):.2%} |" if name in equal else "- |")
        for name, cm in scores.items()
    ]
    text = "\n".join(
        [
            f"Model: {hp.algorithm} on {hp.backbone}, {artifact.num_classes} classes, crop_size {hp.crop_size} "
            f"(`{artifact.params_path.name}`); data: {len(samples)} validation images from `{args.data.name}` "
            f"({pixels:,} pixels).",
            "",
            "| evaluation | mIOU | pixel accuracy | seconds/image | pixels equal to the whole-image mask |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    publish("inference-parity", text, not args.no_record)


if __name__ == "__main__":
    main()
