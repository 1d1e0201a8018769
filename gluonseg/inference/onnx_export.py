"""`gluonseg export --format onnx`: a model folder's network as model.onnx + model.json, checked before it is kept.

The file (opset 13 by default; 12 also works):
- input `data`: float32 (N, 3, H, W), RGB scaled to [0, 1] and normalised with model.json's `mean`/`std`;
- output `logits`: float32 (N, C, H, W), at the input's size; the auxiliary head is not exported;
- without a fixed shape, N, H and W are free (H and W multiples of 8): resize targets and PSP's pyramid
  bins follow the input (gluonseg.inference.onnx_ops); with `height`/`width` the input is declared at that
  size (the graph is the network specialised to it, gluonseg.inference.shape_graphs.respecialise);
- weights are initializers only, not graph inputs, so runtimes fold constants.

Parity is part of export: the written file runs in ONNX Runtime beside the MXNet network on the same
normalised pixels (`check_images`, else a few generated pictures): the largest |Δ logit| and the share of
pixels with the same argmax go into model.json. Under MIN_EQUAL_ARGMAX the export fails and leaves no file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from PIL import Image

from gluonseg.artifacts import ModelArtifact, read_model_dir, versions
from gluonseg.data.images import load_image
from gluonseg.data.synthetic import make_layout, render_picture
from gluonseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.inference.geometry import MULTIPLE, native_canvas
from gluonseg.inference.network import MXNetNetwork
from gluonseg.inference.onnx_ops import EXPORTER_OPSETS, INPUT_NAME, size_following_translations
from gluonseg.inference.precision import calibration_image_paths, fp32_network
from gluonseg.inference.shape_graphs import respecialise, traced_symbol
from gluonseg.util import params_digest

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
RECORD_FILE = "model.json"
RECORD_FORMAT = "gluonseg-onnx/1"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 13
MIN_EQUAL_ARGMAX = 0.999
CHECK_IMAGES = 3  # generated pictures when none are given
CHECK_MAX_PIXELS = 512 * 512  # check pictures are scaled down to this (native scale), to keep export quick


def check_shape(height: int | None, width: int | None) -> tuple[int, int] | None:
    """(height, width) for a fixed-shape export, None for a free one; ClientError for half or bad values."""
    if height is None and width is None:
        return None
    if height is None or width is None:
        raise ClientError("--height and --width go together (a fixed input shape), or neither (any shape)")
    for name, value in (("--height", height), ("--width", width)):
        if value < MULTIPLE or value % MULTIPLE:
            raise ClientError(f"{name} must be a positive multiple of {MULTIPLE}, got {value}")
    return int(height), int(width)


def export_onnx(
    model_dir: Path,
    out_dir: Path,
    height: int | None = None,
    width: int | None = None,
    opset: int = DEFAULT_OPSET,
    check_images: Path | None = None,
) -> dict[str, Any]:
    """Write out_dir/model.onnx and out_dir/model.json; returns the record (model.json's content)."""
    shape = check_shape(height, width)
    if opset not in EXPORTER_OPSETS:
        raise ClientError(f"--opset must be one of {', '.join(map(str, EXPORTER_OPSETS))}, got {opset}")
    artifact = read_model_dir(Path(model_dir))
    pictures = check_pictures(check_images, artifact.num_classes)  # fail on a bad folder before the slow part
    start = time.perf_counter()
    network = MXNetNetwork(fp32_network(artifact), artifact.hp.crop_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written next to the destination and moved in only once checked: a failed export leaves nothing.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch:
        path = Path(scratch) / ONNX_FILE
        write_onnx(network.net, artifact.hp.crop_size, artifact.num_classes, path, shape, opset)
        parity = check_parity(path, network, pictures, shape)
        record = _record(artifact, shape, opset, parity, time.perf_counter() - start)
        if parity["equal_argmax"] < MIN_EQUAL_ARGMAX:
            raise AlgorithmError(
                f"the exported model disagrees with the MXNet network: {parity['equal_argmax']:.4%} of "
                f"{parity['pixels']} pixels have the same class (at least {MIN_EQUAL_ARGMAX:.1%} needed), "
                f"largest logit difference {parity['max_abs_logit_diff']:.3g}; nothing was written to {out_dir}"
            )
        (Path(scratch) / RECORD_FILE).write_text(json.dumps(record, indent=1))
        for name in (ONNX_FILE, RECORD_FILE):
            os.replace(Path(scratch) / name, out_dir / name)
    log.info("exported %s (%s) in %.1f s", out_dir / ONNX_FILE, describe_record(record), record["export_seconds"])
    return record


def write_onnx(
    net: mx.gluon.HybridBlock,
    crop_size: int,
    num_classes: int,
    path: Path,
    shape: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> None:
    """Translate the (hybridized) network's main head to ONNX at `path`; see the module docstring."""
    import onnx
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from onnx import TensorProto, helper

    symbol = traced_symbol(net)
    params = {name: p.data() for name, p in net.collect_params().items()}
    if shape is None:
        in_shape, target = (1, 3, crop_size, crop_size), (crop_size, crop_size)
    else:
        symbol = mx.sym.load_json(respecialise(symbol.tojson(), crop_size, *shape))
        in_shape, target = (1, 3, *shape), shape
    with size_following_translations(target), _quiet_exporter():
        graph = MXNetGraph().create_onnx_graph_proto(
            symbol,
            params,
            [in_shape],
            [TensorProto.FLOAT],
            opset_version=opset,
            dynamic=shape is None,
            dynamic_input_shapes=[(None, 3, None, None)] if shape is None else None,
        )
    _clean_graph(graph, num_classes, shape)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="gluonseg", producer_version=_version()
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _clean_graph(graph: Any, num_classes: int, shape: tuple[int, int] | None) -> None:
    """Weights out of the graph inputs; the output named `logits`; dimensions named."""
    weights = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    if [i.name for i in graph.input] != [INPUT_NAME] or len(graph.output) != 1:
        raise AlgorithmError(f"unexpected exported graph: inputs {[i.name for i in graph.input]}")
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
    graph.output[0].name = OUTPUT_NAME
    dims = ("batch", 3, "height", "width") if shape is None else (1, 3, *shape)
    out_dims = (dims[0], num_classes, dims[2], dims[3])
    for value, wanted in ((graph.input[0], dims), (graph.output[0], out_dims)):
        tensor_dims = value.type.tensor_type.shape.dim
        del tensor_dims[:]
        for d in wanted:
            tensor_dims.add().CopyFrom(_dim(d))


def _dim(value: int | str) -> Any:
    from onnx import TensorShapeProto

    d = TensorShapeProto.Dimension()
    if isinstance(value, str):
        d.dim_param = value
    else:
        d.dim_value = int(value)
    return d


class _quiet_exporter:
    """MXNet's exporter logs every node at INFO on the root logger; keep it to warnings."""

    def __enter__(self) -> None:
        self._level = logging.root.level
        logging.root.setLevel(max(self._level, logging.WARNING))

    def __exit__(self, *exc: object) -> None:
        logging.root.setLevel(self._level)


# -- parity


def check_pictures(folder: Path | None, classes: int) -> list[tuple[str, np.ndarray]]:
    """(name, RGB picture): the first 16 images of `folder`, else CHECK_IMAGES generated ones."""
    if folder is not None:
        paths = calibration_image_paths(Path(folder), 16)
        return [(p.name, load_image(p, str(p))) for p in paths]
    pictures, classes = [], max(classes, 2)
    for index in range(CHECK_IMAGES):  # the generated dataset's pictures: shapes of every class, varied sizes
        layout = make_layout(seed=11, index=index, size=200, classes=classes, top_class=1 + index % (classes - 1))
        pictures.append((f"generated-{index}", render_picture(layout, 11, index, classes)))
    return pictures


def check_parity(
    path: Path,
    reference: MXNetNetwork,
    pictures: list[tuple[str, np.ndarray]],
    shape: tuple[int, int] | None,
) -> dict[str, Any]:
    """Run `path` in ONNX Runtime and `reference` on the same canvases: largest |Δ logit|, equal argmax share."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, equal, total = 0.0, 0, 0
    for _, picture in pictures:
        data = _canvas(picture, shape)
        ours = session.run(None, {INPUT_NAME: data[None]})[0][0]
        theirs = reference.logits(data)
        worst = max(worst, float(np.abs(ours - theirs).max()))
        equal += int((ours.argmax(axis=0) == theirs.argmax(axis=0)).sum())
        total += ours.shape[1] * ours.shape[2]
    return {
        "images": [name for name, _ in pictures],
        "pixels": total,
        "equal_argmax": equal / total,
        "max_abs_logit_diff": worst,
        "runtime": f"onnxruntime {ort.__version__}",
    }


def _canvas(picture: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """The normalised (3, H, W) input the network sees: the fixed shape, else the native canvas."""
    if shape is not None:
        resized = np.asarray(Image.fromarray(picture).resize((shape[1], shape[0]), Image.BILINEAR))
        return np.ascontiguousarray(normalize(resized), dtype=np.float32)
    data, _, _ = native_canvas(picture, CHECK_MAX_PIXELS)
    return np.ascontiguousarray(data, dtype=np.float32)


# -- model.json


def _record(
    artifact: ModelArtifact, shape: tuple[int, int] | None, opset: int, parity: dict[str, Any], seconds: float
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    hp = artifact.hp
    free = ["batch", 3, "height", "width"]
    dims = free if shape is None else [1, 3, *shape]
    return {
        "format": RECORD_FORMAT,
        "algorithm": hp.algorithm,
        "backbone": hp.backbone,
        "num_classes": artifact.num_classes,
        "class_names": artifact.class_names,
        "palette": artifact.meta.get("palette"),
        "crop_size": hp.crop_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "input": {
            "name": INPUT_NAME,
            "shape": dims,
            "dtype": "float32",
            "layout": "NCHW, RGB scaled to [0, 1], then (x - mean) / std",
            "multiple_of": MULTIPLE,
        },
        "output": {"name": OUTPUT_NAME, "shape": [dims[0], artifact.num_classes, dims[2], dims[3]], "dtype": "float32"},
        "dynamic": shape is None,
        "opset": opset,
        "source": {"params": artifact.params_path.name, "sha256": params_digest(artifact.params_path)},
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "parity": parity,
        "export_seconds": round(seconds, 2),
    }


def describe_record(record: dict[str, Any]) -> str:
    shape = "any H x W (multiples of 8)" if record["dynamic"] else "x".join(map(str, record["input"]["shape"][2:]))
    parity = record["parity"]
    return (
        f"{record['algorithm']} on {record['backbone']}, {record['num_classes']} classes, input {shape}, "
        f"opset {record['opset']}; against MXNet on {len(parity['images'])} image(s): "
        f"{parity['equal_argmax']:.4%} equal classes, max |Δ logit| {parity['max_abs_logit_diff']:.2g}"
    )


def read_record(folder: Path) -> dict[str, Any] | None:
    """model.json of an export in `folder`, or None when there is none (or it is not ours)."""
    path = Path(folder) / RECORD_FILE
    if not (path.is_file() and (Path(folder) / ONNX_FILE).is_file()):
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _version() -> str:
    import gluonseg

    return gluonseg.__version__
