"""Inference parity: the serving Predictor against the training's whole-image validation, on one model.

The Predictor resizes the short side to crop_size and averages crop-sized tiles through a compiled graph;
training's whole-image validation (validation_mini_batch_size=1) runs the non-hybridized network, aux head
and all, through GluonCV's `predict` at the image's own resolution. Both are scored with the same confusion
matrix on every validation image; the fraction of pixels where the two masks agree is reported too.
Trains nothing: point it at a trained model folder and the dataset it was trained on.

Run: .venv/bin/python -m benchmarks.inference_parity --model-dir M --data DIR [--limit N] [--no-record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mxnet as mx
import numpy as np

from benchmarks.report import write_section
from gluonseg.artifacts import read_model_dir
from gluonseg.data.channels import SPLITS, pair_channel
from gluonseg.data.images import load_image, load_mask
from gluonseg.data.label_map import load_label_map
from gluonseg.data.transforms import normalize
from gluonseg.inference import Predictor
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

    predictor = Predictor.from_model_dir(args.model_dir)
    # As training validates: the whole network from the file (aux head included), not hybridized.
    reference = load_trained_network(
        artifact.params_path, hp.algorithm, hp.backbone, artifact.num_classes, hp.crop_size, hp.base_size
    )

    served, whole = ConfusionMatrix(artifact.num_classes), ConfusionMatrix(artifact.num_classes)
    served_s = whole_s = 0.0
    equal = pixels = 0
    for sample in samples:
        # Masks are drawn on the stored pixel grid, so no EXIF rotation (as the training loader does).
        image = load_image(sample.image_path, str(sample.image_path), apply_exif=False)
        mask = label_map.apply(load_mask(sample.mask_path, str(sample.mask_path)))
        start = time.perf_counter()
        pred = predictor.predict_mask(image)
        served_s += time.perf_counter() - start
        start = time.perf_counter()
        logits = whole_image_logits(reference, mx.nd.array(normalize(image)[None]))
        ref = logits.argmax(axis=1).asnumpy()[0].astype(np.uint8)
        whole_s += time.perf_counter() - start
        served.update(pred, mask)
        whole.update(ref, mask)
        equal += int((pred == ref).sum())
        pixels += pred.size

    n = max(len(samples), 1)
    text = "\n".join(
        [
            f"Model: {hp.algorithm} on {hp.backbone}, {artifact.num_classes} classes, crop_size {hp.crop_size} "
            f"(`{artifact.params_path.name}`); data: {len(samples)} validation images from `{args.data.name}`.",
            "",
            "| evaluation | mIOU | pixel accuracy | seconds/image |",
            "| --- | --- | --- | --- |",
            f"| Predictor (short side to crop_size, tiles, compiled graph) | {served.mean_iou():.4f} | "
            f"{served.pixel_accuracy():.4f} | {served_s / n:.3f} |",
            f"| whole image, as training validates (`predict`, native size) | {whole.mean_iou():.4f} | "
            f"{whole.pixel_accuracy():.4f} | {whole_s / n:.3f} |",
            "",
            f"Pixels where the two masks agree: {equal / max(pixels, 1):.2%} of {pixels:,}.",
        ]
    )
    print(text)
    if not args.no_record:
        write_section("inference-parity", text)


if __name__ == "__main__":
    main()
