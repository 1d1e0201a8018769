"""Lower-precision CPU inference: INT8 (oneDNN quantization, calibrated) and BF16 (oneDNN mixed precision).

Both replace only the network inside the Predictor: the same (1, 3, crop, crop) input, the same float32
logits out, so tiling, resizing and post-processing are untouched.

INT8: MXNet's `quantize_net_v2` with naive calibration (each layer's min/max over the calibration
tiles become its fixed quantization ranges; no range is computed per request). Concat layers stay in
FP32, as GluonCV does for its PSP/DeepLab INT8 models: concat of branches with different ranges loses
the most. Calibration tiles are exactly what the Predictor feeds the network (`network_tiles`), made
from real images. Those images come from, in order of preference:
1. the export: `export_int8(model_dir, calibration_dir)` (CLI: `gluonseg quantize --model-dir M
   --calibration DIR [--num N]`) writes `model-int8-symbol.json`, `model-int8-0000.params` and
   `model-int8.json` (what it was calibrated on, and the SHA-256 of the FP32 parameters it came from)
   into the model folder; `load_predictor(M, precision='int8')` (gluonseg.inference.loading) loads them
   without any images.
   Files made from other parameters (the folder was retrained since) are ignored with a warning.
2. a folder of images given at load time (`calibration_dir`; the server's GLUONSEG_CALIBRATION_DIR):
   the first N image files in name order (default DEFAULT_CALIBRATION_IMAGES), quantized in the worker
   at start-up. Use images like the ones to be served (the validation channel's images are a good choice).
Neither present is a ClientError: an uncalibrated INT8 model would be slower and less accurate.

BF16: `amp.convert_hybrid_block(target_dtype='bfloat16')` runs convolutions in bfloat16 and keeps
BatchNorm statistics, softmax-like and resize ops in FP32; Concat is forced to FP32 too (PSP's pyramid
concatenates BF16 features with FP32 pooled branches, which MXNet's converter otherwise rejects).

Fallback: INT8 and BF16 need MXNet's oneDNN (MKLDNN) backend on a CPU context. Where that is missing,
or where the converted BF16 graph fails its trial forward pass (MXNet's way of saying "unsupported"),
`network_for_precision` logs why and hands back the FP32 network; `predictor.precision` then says 'fp32'.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluonseg.artifacts import ModelArtifact, read_model_dir, versions
from gluonseg.data.images import load_image
from gluonseg.errors import ClientError, error_summary
from gluonseg.inference.choices import check_precision
from gluonseg.inference.geometry import network_tiles
from gluonseg.models import load_trained_network
from gluonseg.util import cpu_flags, params_digest

log = logging.getLogger(__name__)

INT8_PREFIX = "model-int8"
INT8_SYMBOL = "model-int8-symbol.json"
INT8_PARAMS = "model-int8-0000.params"
INT8_RECORD = "model-int8.json"
INT8_FORMAT = "gluonseg-int8/1"
DEFAULT_CALIBRATION_IMAGES = 10
MAX_CALIBRATION_TILES = 64  # bounds memory and start-up time; naive min/max settles after a few dozen tiles
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EXCLUDED_LAYERS_MATCH = ["concat"]
BF16_FP32_OPS_EXTRA = ["Concat", "concat"]


def unsupported_reason(ctx: mx.Context) -> str | None:
    """Why oneDNN INT8/BF16 cannot run on `ctx`, or None when they can."""
    if ctx.device_type != "cpu":
        return f"oneDNN INT8/BF16 run on the CPU only, and the model is on {ctx}"
    if not mx.runtime.Features().is_enabled("MKLDNN"):
        return "this MXNet build has no oneDNN (MKLDNN) backend"
    return None


# -- calibration data


def calibration_image_paths(folder: Path, limit: int) -> list[Path]:
    """The first `limit` image files of `folder` in name order; ClientError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClientError(f"calibration folder {folder} does not exist or is not a folder")
    if limit < 1:
        raise ClientError(f"the number of calibration images must be at least 1, got {limit}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ClientError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths[:limit]


def calibration_tiles(paths: list[Path], crop_size: int) -> np.ndarray:
    """(N, 3, crop, crop) float32: the tiles the Predictor would feed the network for these images."""
    tiles: list[np.ndarray] = []
    for path in paths:
        tiles.extend(network_tiles(load_image(path, str(path)), crop_size))
        if len(tiles) >= MAX_CALIBRATION_TILES:
            break
    return np.stack(tiles[:MAX_CALIBRATION_TILES])


# -- conversions


def _first_output(out: Any) -> mx.nd.NDArray:
    return out[0] if isinstance(out, list | tuple) else out


def quantize_network(net: gluon.HybridBlock, tiles: np.ndarray) -> gluon.SymbolBlock:
    """An INT8 SymbolBlock of `net` (FP32, not yet run), ranges calibrated naively on `tiles` (N, 3, crop, crop)."""
    from mxnet.contrib.quantization import quantize_net_v2

    calib = mx.io.NDArrayIter(data=tiles.astype(np.float32), batch_size=1, data_name="data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SymbolBlock's "cannot decide type" notice about the input
        return quantize_net_v2(
            net,
            quantized_dtype="auto",
            exclude_layers_match=list(EXCLUDED_LAYERS_MATCH),
            calib_data=calib,
            calib_mode="naive",
            num_calib_examples=len(tiles),
            ctx=mx.cpu(),
        )


def to_bfloat16(net: gluon.HybridBlock, height: int, width: int, ctx: mx.Context) -> tuple[gluon.HybridBlock, str]:
    """(BF16 network, 'bf16'), or (`net`, 'fp32') with a logged reason when MXNet cannot run it here.

    The network is traced on a (1, 3, height, width) input: the shape its graph is built for.
    """
    from mxnet.contrib import amp
    from mxnet.contrib.amp.lists import symbol_bf16

    if "avx512_bf16" not in cpu_flags() and "amx_bf16" not in cpu_flags():
        log.warning("this CPU has no native BF16 instructions: oneDNN emulates them, usually slower than FP32")
    zeros = mx.nd.zeros((1, 3, height, width), ctx=ctx)
    try:
        net.hybridize()
        _first_output(net(zeros)).wait_to_read()  # the converter needs a traced graph
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = amp.convert_hybrid_block(
                net,
                target_dtype="bfloat16",
                fp32_ops=list(symbol_bf16.FP32_FUNCS) + BF16_FP32_OPS_EXTRA,
                ctx=ctx,
                cast_optional_params=True,
            )
        _first_output(converted(zeros)).wait_to_read()  # MXNet reports an unsupported op or CPU here
    except (mx.base.MXNetError, RuntimeError, AssertionError, ValueError, TypeError) as exc:
        reason = error_summary(exc, 300)
        log.warning("BF16 inference is not supported here (%s); running FP32", reason)
        return net, "fp32"
    return converted, "bf16"


# -- the exported INT8 model


def load_int8(artifact: ModelArtifact, ctx: mx.Context) -> gluon.SymbolBlock | None:
    """The exported INT8 network of this model folder, or None when absent or made from other parameters."""
    folder = artifact.folder
    symbol, params, record_path = folder / INT8_SYMBOL, folder / INT8_PARAMS, folder / INT8_RECORD
    if not symbol.exists():
        return None
    if not params.exists() or not record_path.exists():
        log.warning(
            "%s: %s is incomplete (needs %s and %s); ignoring it", folder, INT8_SYMBOL, INT8_PARAMS, INT8_RECORD
        )
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); ignoring the INT8 files", record_path, exc)
        return None
    if record.get("source_sha256") != params_digest(artifact.params_path, "sha256"):
        log.warning(
            "%s was made from other parameters than %s (retrained since?); ignoring it",
            INT8_SYMBOL,
            artifact.params_path.name,
        )
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gluon.SymbolBlock.imports(str(symbol), ["data"], str(params), ctx=ctx)
    except mx.base.MXNetError as exc:
        raise ClientError(f"{symbol}: cannot load the INT8 model ({error_summary(exc)})") from None


def fp32_network(artifact: ModelArtifact, ctx: mx.Context | None = None) -> gluon.HybridBlock:
    """The model folder's FP32 network without the aux head (on the CPU unless `ctx` says otherwise)."""
    hp = artifact.hp
    return load_trained_network(
        artifact.params_path, hp.algorithm, hp.backbone, artifact.num_classes, hp.crop_size, hp.base_size,
        ctx=ctx, aux=False,
    )  # fmt: skip


def export_int8(model_dir: Path, calibration_dir: Path, num_images: int = DEFAULT_CALIBRATION_IMAGES) -> dict[str, Any]:
    """Quantize the model folder's network on `calibration_dir`'s images; write the INT8 files into the folder.

    Returns the record written to model-int8.json. The files are written under temporary names and renamed,
    the record last, so a reader never sees a half-written model.
    """
    start = time.perf_counter()
    folder = Path(model_dir)
    artifact = read_model_dir(folder)
    reason = unsupported_reason(mx.cpu())
    if reason:
        raise ClientError(f"cannot produce an INT8 model: {reason}")
    hp = artifact.hp
    paths = calibration_image_paths(Path(calibration_dir), num_images)
    tiles = calibration_tiles(paths, hp.crop_size)
    net = fp32_network(artifact, mx.cpu())
    qnet = quantize_network(net, tiles)
    # export() saves the parameters the cached graph was built with, so it needs one forward pass first.
    qnet.hybridize()
    _first_output(qnet(mx.nd.zeros((1, 3, hp.crop_size, hp.crop_size)))).wait_to_read()
    tmp_prefix = folder / f".{INT8_PREFIX}-tmp"
    qnet.export(str(tmp_prefix), epoch=0)
    os.replace(f"{tmp_prefix}-symbol.json", folder / INT8_SYMBOL)
    os.replace(f"{tmp_prefix}-0000.params", folder / INT8_PARAMS)
    record = {
        "format": INT8_FORMAT,
        "source_params": artifact.params_path.name,
        "source_sha256": params_digest(artifact.params_path, "sha256"),
        "calibration_dir": str(calibration_dir),
        "calibration_images": [p.name for p in paths],
        "calibration_tiles": int(len(tiles)),
        "calib_mode": "naive",
        "quantized_dtype": "auto",
        "excluded_layers_match": list(EXCLUDED_LAYERS_MATCH),
        "crop_size": hp.crop_size,
        "versions": versions(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    tmp_record = folder / f".{INT8_RECORD}.tmp"
    tmp_record.write_text(json.dumps(record, indent=1))
    os.replace(tmp_record, folder / INT8_RECORD)
    log.info(
        "INT8 model written to %s (%d calibration tiles from %d images, %.1f s)",
        folder / INT8_SYMBOL,
        len(tiles),
        len(paths),
        record["seconds"],
    )
    return record


# -- what loading a model folder calls


def network_for_precision(
    artifact: ModelArtifact,
    precision: str,
    ctx: mx.Context,
    calibration_dir: Path | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
) -> tuple[gluon.HybridBlock, str]:
    """(network without the aux head, precision it runs in) for a model folder; see the module docstring."""
    precision = check_precision(precision)
    if precision != "fp32":
        reason = unsupported_reason(ctx)
        if reason:
            log.warning("%s inference is not available (%s); running FP32", precision.upper(), reason)
            precision = "fp32"
    if precision == "int8":
        exported = load_int8(artifact, ctx)
        if exported is not None:
            log.info("INT8 network from %s", artifact.folder / INT8_SYMBOL)
            return exported, "int8"
        if calibration_dir is None:
            raise ClientError(
                f"precision int8 needs {INT8_SYMBOL} in the model folder {artifact.folder} (made by "
                "`gluonseg quantize --model-dir M --calibration DIR`) or calibration images "
                "(GLUONSEG_CALIBRATION_DIR)"
            )
        paths = calibration_image_paths(Path(calibration_dir), calibration_images)  # fail before the slow part
    hp = artifact.hp
    net = fp32_network(artifact, ctx)
    if precision == "int8":
        start = time.perf_counter()
        tiles = calibration_tiles(paths, hp.crop_size)
        qnet = quantize_network(net, tiles)
        log.info(
            "INT8 network calibrated on %d tiles from %d images of %s in %.1f s",
            len(tiles),
            len(paths),
            calibration_dir,
            time.perf_counter() - start,
        )
        return qnet, "int8"
    if precision == "bf16":
        return to_bfloat16(net, hp.crop_size, hp.crop_size, ctx)
    return net, "fp32"


def bfloat16_at_shape(fp32: gluon.HybridBlock, height: int, width: int, ctx: mx.Context) -> gluon.HybridBlock:
    """A native-scale graph of a BF16 network, converted at its own shape (gluonseg.inference.shape_graphs): MXNet's
    BF16 graphs only run with the parameter types the converter chose for the shape it traced."""
    converted, used = to_bfloat16(fp32, height, width, ctx)
    if used != "bf16":
        raise RuntimeError(f"BF16 conversion failed for a {width}x{height} input")
    return converted


def describe_export(model_dir: Path, record: dict[str, Any]) -> str:
    """The line `gluonseg quantize` prints after export_int8."""
    return (
        f"wrote {Path(model_dir) / INT8_SYMBOL} and {INT8_PARAMS}: calibrated on {record['calibration_tiles']} "
        f"tiles from {len(record['calibration_images'])} images in {record['seconds']} s"
    )
