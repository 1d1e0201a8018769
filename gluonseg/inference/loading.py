"""A Predictor from a model folder (gluonseg.artifacts format): the files read, the backend's network built."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mxnet as mx
from mxnet import gluon

from gluonseg.artifacts import ModelArtifact, read_model_dir
from gluonseg.errors import ClientError
from gluonseg.inference.choices import check_backend, check_precision
from gluonseg.inference.geometry import DEFAULT_SCALE, NATIVE_MAX_PIXELS
from gluonseg.inference.network import MXNetNetwork, Network, ShapeConverter
from gluonseg.inference.precision import (
    DEFAULT_CALIBRATION_IMAGES,
    bfloat16_at_shape,
    network_for_precision,
)
from gluonseg.inference.predictor import Predictor

log = logging.getLogger(__name__)


def load_predictor(
    folder: Path,
    ctx: mx.Context | None = None,
    precision: str = "fp32",
    calibration_dir: Path | None = None,
    calibration_images: int | None = None,
    scale: str = DEFAULT_SCALE,
    native_max_pixels: int = NATIVE_MAX_PIXELS,
    backend: str = "mxnet",
    **options: Any,
) -> Predictor:
    """Load a model folder; the aux head in the file is dropped.

    scale: 'native', 'crop' or 'slide' (gluonseg.inference.geometry, gluonseg.inference.windows);
    native_max_pixels bounds the native scale. `options`: the Predictor's slide_long_side, slide_window,
    slide_stride, tta and max_probability_bytes.

    backend: 'mxnet' (the reference), 'onnxruntime' or 'openvino' (the model folder's ONNX export,
    made and cached on first use: gluonseg.inference.onnx_cache), or 'auto' (measured and chosen at load:
    gluonseg.inference.backend_choice; `precision` is then chosen too).

    precision: 'fp32' (default), 'int8' or 'bf16'. With mxnet: oneDNN on the CPU; see
    gluonseg.inference.precision for where INT8 comes from (the exported model-int8-* files, else
    calibration on `calibration_dir`'s images) and when a precision falls back to fp32. OpenVINO runs fp32
    and bf16, ONNX Runtime fp32; both run int8 from the model folder's model-int8.onnx
    (gluonseg.inference.int8_onnx). `predictor.backend` and `predictor.precision` say what was used.
    """
    backend = check_backend(backend)
    artifact = read_model_dir(Path(folder))
    hp = artifact.hp
    ctx = ctx or mx.cpu()

    def make(backend: str, precision: str) -> Network:
        return make_network(artifact, backend, precision, ctx, calibration_dir, calibration_images)

    if backend == "auto":
        from gluonseg.inference.backend_choice import choose_network

        network = choose_network(artifact, make, calibration_dir)
    else:
        network = make(backend, precision)
    log.info(
        "loaded %s (%s on %s, %d classes, crop %d, %s %s, %s scale), TTA %s",
        artifact.params_path,
        hp.algorithm,
        hp.backbone,
        artifact.num_classes,
        hp.crop_size,
        network.backend,
        network.precision,
        scale,
        options.get("tta") or "none",
    )
    return Predictor(
        network,
        artifact.num_classes,
        hp.crop_size,
        artifact.class_names,
        artifact.meta.get("palette"),
        hp.algorithm,
        scale=scale,
        native_max_pixels=native_max_pixels,
        **options,
    )


def make_network(
    artifact: ModelArtifact,
    backend: str,
    precision: str,
    ctx: mx.Context,
    calibration_dir: Path | None = None,
    calibration_images: int | None = None,
) -> Network:
    """The model folder's network on one backend at one precision (see load_predictor)."""
    precision = check_precision(precision)
    if backend == "mxnet":
        net, used = network_for_precision(
            artifact,
            precision,
            ctx,
            calibration_dir=calibration_dir,
            calibration_images=calibration_images or DEFAULT_CALIBRATION_IMAGES,
        )
        converter = _bfloat16_converter(ctx) if used == "bf16" else None
        return MXNetNetwork(net, artifact.hp.crop_size, ctx, used, converter)
    from gluonseg.inference.onnx_backends import OnnxRuntimeNetwork, OpenVinoNetwork, check_backend_precision
    from gluonseg.inference.onnx_cache import exported_model

    check_backend_precision(backend, precision)  # before the export, which takes a while
    if precision == "int8":
        from gluonseg.inference.int8_onnx import INT8_ONNX, int8_onnx_path

        path = int8_onnx_path(artifact)
        if path is None:
            raise ClientError(
                f"backend {backend} runs INT8 from {INT8_ONNX} in the model folder {artifact.folder}, which has "
                "none kept for these parameters (training makes it unless int8_model=False; or run "
                "`gluonseg quantize --format onnx --model-dir M --calibration DIR`)"
            )
    else:
        path = exported_model(artifact)
    if backend == "onnxruntime":
        return OnnxRuntimeNetwork(path, precision=precision)
    return OpenVinoNetwork(path, precision)


def _bfloat16_converter(ctx: mx.Context) -> ShapeConverter:
    """BF16 graphs are converted per native-scale shape (gluonseg.inference.precision.bfloat16_at_shape)."""

    def convert(graph: gluon.HybridBlock, height: int, width: int) -> gluon.HybridBlock:
        return bfloat16_at_shape(graph, height, width, ctx)

    return convert
