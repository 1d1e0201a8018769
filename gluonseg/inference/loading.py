"""A Predictor from a model folder (gluonseg.artifacts format): the files read, the precision's network picked."""

from __future__ import annotations

import logging
from pathlib import Path

import mxnet as mx
from mxnet import gluon

from gluonseg.artifacts import read_model_dir
from gluonseg.inference.geometry import DEFAULT_SCALE, NATIVE_MAX_PIXELS
from gluonseg.inference.precision import DEFAULT_CALIBRATION_IMAGES, bfloat16_at_shape, network_for_precision
from gluonseg.inference.predictor import Predictor, ShapeConverter

log = logging.getLogger(__name__)


def load_predictor(
    folder: Path,
    ctx: mx.Context | None = None,
    precision: str = "fp32",
    calibration_dir: Path | None = None,
    calibration_images: int | None = None,
    scale: str = DEFAULT_SCALE,
    native_max_pixels: int = NATIVE_MAX_PIXELS,
) -> Predictor:
    """Load a model folder; the aux head in the file is dropped.

    scale: 'native' or 'crop' (gluonseg.inference.geometry); native_max_pixels bounds the native scale.

    precision: 'fp32' (default), 'int8' or 'bf16' (oneDNN, CPU); see gluonseg.inference.precision for where
    INT8 comes from (the exported model-int8-* files, else calibration on `calibration_dir`'s images)
    and when a precision falls back to fp32. `predictor.precision` says what was used.
    """
    artifact = read_model_dir(Path(folder))
    hp = artifact.hp
    ctx = ctx or mx.cpu()
    net, used = network_for_precision(
        artifact,
        precision,
        ctx,
        calibration_dir=calibration_dir,
        calibration_images=calibration_images or DEFAULT_CALIBRATION_IMAGES,
    )
    log.info(
        "loaded %s (%s on %s, %d classes, crop %d, %s, %s scale)",
        artifact.params_path,
        hp.algorithm,
        hp.backbone,
        artifact.num_classes,
        hp.crop_size,
        used,
        scale,
    )
    return Predictor(
        net,
        artifact.num_classes,
        hp.crop_size,
        ctx,
        artifact.class_names,
        artifact.meta.get("palette"),
        hp.algorithm,
        precision=used,
        scale=scale,
        native_max_pixels=native_max_pixels,
        shape_converter=_bfloat16_converter(ctx) if used == "bf16" else None,
    )


def _bfloat16_converter(ctx: mx.Context) -> ShapeConverter:
    """BF16 graphs are converted per native-scale shape (gluonseg.inference.precision.bfloat16_at_shape)."""

    def convert(graph: gluon.HybridBlock, height: int, width: int) -> gluon.HybridBlock:
        return bfloat16_at_shape(graph, height, width, ctx)

    return convert
