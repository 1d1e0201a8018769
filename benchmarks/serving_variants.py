"""The side-by-side serving variants in process: stock GluonCV (a, a') and our handler (b to e), each timed
stage by stage on one request, and scored on the validation set.

The variants are listed in benchmarks.serving's docstring.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common.load import HEADERS

CALIBRATION_IMAGES = 10
VARIANTS = {
    "a": "(a) stock GluonCV, predict() at full size",
    "a'": "(a') stock predict() at crop scale (in-process only)",
    "b": "(b) ours FP32",
    "c": "(c) ours INT8",
    "d": "(d) ours BF16",
    "e": "(e) ours FP32, crop scale",
}
PRECISION = {"b": "fp32", "c": "int8", "d": "bf16", "e": "fp32"}
SCALE = {"b": "native", "c": "native", "d": "native", "e": "crop"}
SERVED = ("a", "b", "c", "d", "e")


def serving_copy(trained: Path, folder: Path, crop: int) -> Path:
    """The trained model folder with hyperparams saying `crop` (same parameters: they are crop-independent)."""
    from gluonseg.artifacts import BEST_PARAMS, HYPERPARAMS_FILE, LAST_PARAMS, META_KEY

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in (BEST_PARAMS, LAST_PARAMS):
        if (trained / name).exists():
            shutil.copyfile(trained / name, folder / name)
    data = json.loads((trained / HYPERPARAMS_FILE).read_text())
    data["crop_size"] = crop
    data.setdefault(META_KEY, {})["crop_size"] = crop
    data[META_KEY]["serving_copy_of"] = str(trained)
    (folder / HYPERPARAMS_FILE).write_text(json.dumps(data, indent=1))
    return folder


@dataclass
class Timed:
    mask: np.ndarray
    stages: dict[str, float]  # seconds


class Stock:
    """(a) and (a'): GluonCV's own class and predict(), not hybridized."""

    def __init__(self, model_dir: Path, at_our_scale: bool = False) -> None:
        import mxnet as mx
        from gluoncv.model_zoo import FCN, DeepLabV3, PSPNet

        from gluonseg.artifacts import read_model_dir
        from gluonseg.models import gluoncv_backbone

        artifact = read_model_dir(model_dir)
        hp = artifact.hp
        has_aux = any(k.startswith("auxlayer.") for k in mx.nd.load(str(artifact.params_path)))
        classes = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}[hp.algorithm]
        with contextlib.redirect_stdout(io.StringIO()):  # PSPNet prints its crop size
            self.net = classes(
                artifact.num_classes,
                backbone=gluoncv_backbone(hp.backbone),
                aux=has_aux,
                pretrained_base=False,
                crop_size=hp.crop_size,
                base_size=hp.base_size,
            )
        self.net.load_parameters(str(artifact.params_path), ctx=mx.cpu())
        self.crop = hp.crop_size
        self.at_our_scale = at_our_scale

    def run(self, jpeg: bytes) -> Timed:
        import mxnet as mx
        from gluoncv.data.transforms.presets.segmentation import test_transform
        from gluoncv.utils.viz import get_color_pallete

        from gluonseg.data.transforms import normalize
        from gluonseg.inference.geometry import resized_size
        from gluonseg.inference.postprocess import logits_to_prediction

        t0 = time.perf_counter()
        img = mx.image.imdecode(jpeg)
        img.wait_to_read()
        t1 = time.perf_counter()
        height, width = img.shape[:2]
        if self.at_our_scale:
            new_h, new_w = resized_size(height, width, self.crop)
            small = np.asarray(Image.fromarray(img.asnumpy()).resize((new_w, new_h), Image.BILINEAR))
            x = mx.nd.array(normalize(small)[None])
        else:
            x = test_transform(img, mx.cpu())
        x.wait_to_read()
        t2 = time.perf_counter()
        out = self.net.predict(x)
        out.wait_to_read()
        t3 = time.perf_counter()
        if self.at_our_scale:
            mask = logits_to_prediction(out[0].asnumpy(), height, width, False).mask
        else:
            mask = mx.nd.squeeze(mx.nd.argmax(out, 1)).asnumpy().astype(np.uint8)
        t4 = time.perf_counter()
        buffer = io.BytesIO()
        get_color_pallete(mask, "pascal_voc").save(buffer, format="PNG")
        t5 = time.perf_counter()
        stages = {"decode": t1 - t0, "preprocess": t2 - t1, "network": t3 - t2, "postprocess": t4 - t3}
        return Timed(mask, {**stages, "encode": t5 - t4, "total": t5 - t0})


class Ours:
    """(b) to (e): the real handler, its stages timed one by one (the same calls `handle` makes)."""

    def __init__(self, model_dir: Path, precision: str, scale: str) -> None:
        from serve.handler import Context, SegmentationHandler

        self.handler = SegmentationHandler()
        self.context = Context(model_dir, precision=precision, scale=scale, request_headers=[dict(HEADERS)])
        self.handler.initialize(self.context)
        self.predictor = self.handler.predictor
        self.precision = self.predictor.precision
        self.network_s = 0.0
        network = self.predictor.network
        forward = network.logits

        def timed_forward(data: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            out = forward(data)
            self.network_s += time.perf_counter() - start
            return out

        network.logits = timed_forward

    def run(self, jpeg: bytes) -> Timed:
        from gluonseg.inference.postprocess import logits_to_prediction

        self.network_s = 0.0
        t0 = time.perf_counter()
        (request,) = self.handler.preprocess([{"body": jpeg}])
        t1 = time.perf_counter()
        predictor = self.predictor
        native = predictor.scale == "native"
        logits = predictor.native_logits(request.image) if native else predictor.averaged_logits(request.image)
        t2 = time.perf_counter()
        prediction = logits_to_prediction(logits, *request.image.shape[:2], False)
        t3 = time.perf_counter()
        self.handler.postprocess([(prediction, request.accept)])
        t4 = time.perf_counter()
        stages = {"decode": t1 - t0, "preprocess": t2 - t1 - self.network_s, "network": self.network_s}
        return Timed(prediction.mask, {**stages, "postprocess": t3 - t2, "encode": t4 - t3, "total": t4 - t0})


def make_variant(key: str, model_dir: Path) -> Stock | Ours:
    if key == "a":
        return Stock(model_dir)
    if key == "a'":
        return Stock(model_dir, at_our_scale=True)
    return Ours(model_dir, PRECISION[key], SCALE[key])


def profile(variant: Stock | Ours, jpeg: bytes, runs: int) -> Timed:
    """Median of each stage over `runs` requests after one warm-up."""
    first = variant.run(jpeg)
    samples = [variant.run(jpeg) for _ in range(runs)]
    stages = {name: statistics.median(s.stages[name] for s in samples) for name in first.stages}
    return Timed(samples[-1].mask, stages)


def validation_scores(variant, samples, label_map, num_classes: int) -> tuple[float, list[np.ndarray]]:
    from gluonseg.data.images import load_mask
    from gluonseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes)
    masks = []
    for sample in samples:
        mask = variant.run(Path(sample.image_path).read_bytes()).mask
        cm.update(mask, label_map.apply(load_mask(sample.mask_path, str(sample.mask_path))))
        masks.append(mask)
    return cm.mean_iou(), masks


def equal_fraction(a: list[np.ndarray] | np.ndarray, b: list[np.ndarray] | np.ndarray) -> float:
    a_list, b_list = (a, b) if isinstance(a, list) else ([a], [b])
    equal = sum(int((x == y).sum()) for x, y in zip(a_list, b_list))
    return equal / sum(x.size for x in a_list)
