"""Large pictures: the slide scale at 24 and 100 MP through the real server, next to native scale at 1 MP, and
test-time augmentation's accuracy and cost on the generated validation set.

1. Through `serve` (nginx + gunicorn, one worker): a random-weight FCN-ResNet-50 with 21 classes (VOC's count;
   a forward pass costs the same whatever the weights), crop 512, on OpenVINO BF16 (the serving default's
   choice on an AMX Xeon; far faster than MXNet FP32 here). Pictures: photo-like JPEGs of 24 MP (6000x4000)
   and 100 MP (12000x8400) at slide scale (window 512, stride 341), and 1 MP (1152x864) at native scale.
   Batch-transform settings (SAGEMAKER_BATCH=true, 100 MB payload: a 200 MP decode bound). Reported:
   seconds per request, windows/s, the worker's peak RSS (VmHWM from /proc).
2. The trained FCN of `benchmarks.run_all` (crop 128, 5 classes, /tmp/gluonseg-bench) on a mosaic of
   validation pictures (each at 200x200, their trained scale) of 4000x3000: native (scaled to 1 MP: every
   object shrinks 3.5x) vs slide (full resolution); mIoU of each and a side-by-side overlay in docs/.
3. The same trained FCN on the generated validation set with MXNet FP32: mIoU and seconds per picture at
   native, native + flip, native + flip + 3 scales, and slide.

Run: .venv/bin/python -m benchmarks.large_pictures [--work /tmp/gluonseg-bench]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from benchmarks.common.models import random_model
from benchmarks.common.procfs import status_mb
from benchmarks.common.report import publish
from benchmarks.common.server import Server

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "docs" / "native_vs_slide.png"
LARGE = {"24 MP": (6000, 4000), "100 MP": (12000, 8400), "100 MP wide": (40000, 2500)}
NATIVE = (1152, 864)
WINDOW = 512
TILE = 200


def photo(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: a small random picture enlarged (smooth regions), quality 90."""
    small = np.random.default_rng(seed).integers(0, 256, (max(2, height // 100), max(2, width // 100), 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def post(server: Server, body: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    r = requests.post(server.url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=3600)
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    return seconds, r.content


def windows_in_log(server: Server, width: int, height: int) -> int:
    """The windows the worker ran for the last picture of that size, from its large-picture log line."""
    lines = [line for line in server.output().splitlines() if f"{width}x{height} picture" in line]
    return int(lines[-1].split(": ")[-1].split(" windows")[0]) if lines else 1


def serving_rows(work: Path, backend: str, precision: str) -> list[str]:
    model = random_model(work / "large-model" / "model", "fcn", classes=21, crop=WINDOW)
    env = {
        "GLUONSEG_BACKEND": backend,
        "GLUONSEG_PRECISION": precision,
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600",
        "OMP_NUM_THREADS": "2",
    }
    rows = []
    runs = [("native", {"1 MP": NATIVE}), ("slide", LARGE)]
    for scale, pictures in runs:
        server = Server(model, workers=1, GLUONSEG_INFERENCE_SCALE=scale, **env).start(timeout=900)
        try:
            (worker,) = server.worker_pids()
            loaded = status_mb(worker, "VmRSS")
            post(server, photo(*NATIVE, seed=9))  # warm: the first request of a shape compiles it
            for name, (width, height) in pictures.items():
                body = photo(width, height)
                seconds, answer = post(server, body)
                mask = Image.open(io.BytesIO(answer))
                assert mask.size == (width, height), mask.size
                windows = windows_in_log(server, width, height)
                rows.append(
                    f"| {name} ({width}x{height}) | {scale} | {len(body) / 2**20:.1f} MB | {seconds:.1f} | "
                    f"{windows} | {windows / seconds:.2f} | {loaded:.0f} | {status_mb(worker, 'VmHWM'):.0f} |"
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    return rows


def mosaic(data: Path, columns: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation pictures (and masks) at TILE x TILE, tiled columns x rows."""
    names = sorted(p.stem for p in (data / "validation").glob("*.jpg"))
    picture = np.zeros((rows * TILE, columns * TILE, 3), np.uint8)
    truth = np.zeros((rows * TILE, columns * TILE), np.uint8)
    for i in range(rows * columns):
        name = names[i % len(names)]
        y, x = (i // columns) * TILE, (i % columns) * TILE
        image = Image.open(data / "validation" / f"{name}.jpg").convert("RGB").resize((TILE, TILE), Image.BILINEAR)
        label = Image.open(data / "validation_annotation" / f"{name}.png").resize((TILE, TILE), Image.NEAREST)
        picture[y : y + TILE, x : x + TILE] = np.asarray(image)
        truth[y : y + TILE, x : x + TILE] = np.asarray(label)
    return picture, truth


def mosaic_rows(work: Path, trained: Path, backend: str, precision: str) -> list[str]:
    from gluonseg.inference.loading import load_predictor
    from gluonseg.metrics import ConfusionMatrix
    from gluonseg.visualize import overlay

    picture, truth = mosaic(work / "data", 20, 15)
    rows, masks = [], {}
    for scale, options in (("native", {}), ("slide", {"slide_window": WINDOW})):
        predictor = load_predictor(trained, scale=scale, backend=backend, precision=precision, **options)
        predictor.predict(picture[:256, :256])  # warm
        start = time.perf_counter()
        result = predictor.predict(picture)
        seconds = time.perf_counter() - start
        cm = ConfusionMatrix(predictor.num_classes)
        cm.update(result.mask, truth)
        masks[scale] = result.mask
        rows.append(f"| {scale} | {result.windows} | {seconds:.1f} | {cm.mean_iou():.3f} | {cm.pixel_accuracy():.3f} |")
        print(rows[-1], flush=True)
    # Side by side, a 1200x450 crop's worth of the top-left corner downscaled: native left, slide right.
    crop = (slice(0, 1500), slice(0, 2000))
    halves = [
        overlay(picture[crop], masks[s][crop], predictor.palette, predictor.class_names, legend=False).resize(
            (800, 600), Image.BILINEAR
        )
        for s in ("native", "slide")
    ]
    side = Image.new("RGB", (1610, 600), (255, 255, 255))
    side.paste(halves[0], (0, 0))
    side.paste(halves[1], (810, 0))
    OVERLAY.parent.mkdir(parents=True, exist_ok=True)
    side.convert("P", palette=Image.ADAPTIVE, colors=128).save(OVERLAY, optimize=True)
    return rows


def validation_rows(work: Path, trained: Path) -> list[str]:
    from gluonseg.evaluate import evaluate_folder
    from gluonseg.inference.tta import parse_tta

    data = work / "data"
    runs = [
        ("native", {}),
        ("native + flip", {"tta": parse_tta("flip")}),
        ("native + flip + scales 0.75,1,1.25", {"tta": parse_tta("flip,scales=0.75,1,1.25")}),
        ("slide (window 128 = crop, stride 85)", {"scale": "slide"}),
    ]
    rows = []
    for name, options in runs:
        report = evaluate_folder(
            trained, data / "validation", data / "validation_annotation", progress=False, backend="mxnet", **options
        )
        rows.append(
            f"| {name} | {report['mIOU']:.4f} | {report['pixel_accuracy']:.4f} | {report['seconds_per_image']:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/gluonseg-bench"))
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    trained = args.work / "models" / "fcn" / "model"
    if not (trained / "hyperparams.json").exists():
        raise SystemExit(f"no trained model at {trained}: run `python -m benchmarks.run_all --work {args.work}` first")

    accuracy = validation_rows(args.work, trained)
    mosaic_table = mosaic_rows(args.work, trained, args.backend, args.precision)
    serving = serving_rows(args.work, args.backend, args.precision)
    body = f"""Timings are from a 2-core machine shared with other jobs while it ran: noisy, compare within a table.

**Through the server** (`serve`, one worker, {args.backend} {args.precision}; FCN-ResNet-50, 21 classes, crop and
window {WINDOW}, stride {WINDOW * 2 // 3}, random weights: the cost and memory of a trained model; batch-transform
settings: `SAGEMAKER_BATCH=true`, 100 MB payload, 200 MP decode bound). Photo-like JPEGs; the answer is the
PNG mask at the picture's size. *Loaded RSS*: the worker after loading the model; *peak RSS*: its VmHWM after the
request (the largest picture so far on that worker).

| picture | scale | JPEG | seconds | windows | windows/s | loaded RSS (MB) | peak RSS (MB) |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(serving)}

The native server started first and made the model's ONNX export in its worker (MXNet's memory stays in
its RSS); the slide server found the export, hence its lower loaded RSS. At 100 MP the largest parts of the
peak are the decoded picture (300 MB as numpy, 400 MB more in PIL while it decodes), the mask (100 MB, and
100 MB for its PNG image) and the band of window rows: a row of windows across 12,000 columns would take
21 x 512 x 12,000 x 4 B = 516 MB, so the picture is done in 2 column strips of 258 MB (bands over 384 MB are
split: `SLIDE_BAND_BYTES`), and the 40,000-pixel-wide one in 5 strips of 344 MB instead of one band of 1.7 GB;
the windows that straddle a strip's edge run once for each side (the windows column counts them). The
(21, 8400, 12000) float32 logits alone would be 8.5 GB.

**A large picture of small objects** (in-process, {args.backend} {args.precision}): 300 generated validation
pictures at 200x200 (the scale the model was trained at) tiled into 4000x3000; the trained FCN-ResNet-50 of the
other sections (crop 128, 5 classes). Native scale runs it at 1 MP (each object shrinks 3.5x), slide at full
resolution (window {WINDOW}). Overlay: `docs/native_vs_slide.png` (native left, slide right).

| scale | windows | seconds | mIoU | pixel accuracy |
| --- | --- | --- | --- | --- |
{chr(10).join(mosaic_table)}

**Generated validation set** (24 pictures of ~160 px, `gluonseg evaluate`, MXNet FP32, the same trained FCN;
seconds per picture exclude the model's load):

| scale and TTA | mIoU | pixel accuracy | seconds per picture |
| --- | --- | --- | --- |
{chr(10).join(accuracy)}
"""
    publish("large-pictures", body, record=not args.no_record)


if __name__ == "__main__":
    main()
