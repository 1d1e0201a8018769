"""The one `gluonseg` argument parser: every command, its flags and their help."""

from __future__ import annotations

import argparse
from pathlib import Path

from gluonseg.cli import commands
from gluonseg.inference.choices import BACKENDS, PRECISIONS
from gluonseg.inference.geometry import SCALES

DESCRIPTION = "`gluonseg`: the user's command line. Thin: parse flags, call the modules that do the work."


def _add_inference_options(
    p: argparse.ArgumentParser, serve: bool = False, serving: bool = False, decode: bool = False
) -> None:
    """--backend/--precision/--calibration/--scale/--max-native-pixels, the slide scale's and TTA's flags and
    --max-probabilities-mb (with `decode`, --max-pixels too), as the server's GLUONSEG_* variables.

    serve: unset flags fall back to the GLUONSEG_* variables; serving (serve, transform): the backend's default is
    the server's (gluonseg.inference.choices.serving_choice), else MXNet, the reference (evaluate, predict).
    """
    unset = " (default: $%s, else %s)" if serve else " (default %s)"

    def default(var: str, value: str) -> str:
        return unset % (var, value) if serve else unset % value

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="what runs the network: mxnet (the reference), onnxruntime or openvino (the model's ONNX export, "
        "made and cached on first use), auto (each measured at load; the fastest whose masks agree with "
        "MXNet FP32 on 99.5%% of pixels)"
        + default("GLUONSEG_BACKEND", "auto; mxnet when a precision is given" if serving else "mxnet"),
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="network precision on the CPU" + default("GLUONSEG_PRECISION", "fp32"),
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="images to calibrate INT8 on at load, when the model folder has no model-int8-* files",
    )
    p.add_argument(
        "--scale",
        choices=SCALES,
        default=None,
        help="native: each image at its own size (up to --max-native-pixels), as GluonCV's predict(); crop: "
        "short side resized to crop_size and tiled (faster on large pictures); slide: the picture at full "
        "resolution under overlapping windows, in bounded memory (large pictures)"
        + default("GLUONSEG_INFERENCE_SCALE", "native"),
    )
    p.add_argument(
        "--slide-long-side",
        type=int,
        default=None,
        metavar="N",
        help="slide scale: resize the picture so its long side is N pixels first (the mask keeps the input's size)"
        + default("GLUONSEG_SLIDE_LONG_SIDE", "the picture's own size"),
    )
    p.add_argument(
        "--window",
        dest="slide_window",
        type=int,
        default=None,
        metavar="PIXELS",
        help="slide scale: window side, a multiple of 8, at least 64" + default("GLUONSEG_SLIDE_WINDOW", "crop_size"),
    )
    p.add_argument(
        "--stride",
        dest="slide_stride",
        type=int,
        default=None,
        metavar="PIXELS",
        help="slide scale: pixels between windows" + default("GLUONSEG_SLIDE_STRIDE", "2/3 of the window"),
    )
    p.add_argument(
        "--tta",
        default=None,
        metavar="SPEC",
        help="test-time augmentation: flip, scales=0.75,1,1.25 or flip,scales=...; softmax probabilities "
        "averaged over the views" + default("GLUONSEG_TTA", "none"),
    )
    p.add_argument(
        "--max-probabilities-mb",
        type=int,
        default=None,
        metavar="MB",
        help="probabilities (C x H x W float32) larger than this are refused"
        + default("GLUONSEG_MAX_PROBABILITIES_MB", "256"),
    )
    if decode:
        p.add_argument(
            "--max-pixels",
            dest="decode_max_pixels",
            type=int,
            default=None,
            metavar="PIXELS",
            help="pictures with more pixels are refused (checked from the header)"
            + default("GLUONSEG_MAX_PIXELS", "36,000,000"),
        )
    p.add_argument(
        "--max-native-pixels",
        dest="native_max_pixels",
        metavar="MAX_NATIVE_PIXELS",
        type=int,
        default=None,
        help="native scale: larger pictures are scaled down to this many pixels"
        + default("GLUONSEG_NATIVE_MAX_PIXELS", str(1 << 20)),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gluonseg", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="generate a learnable dataset in the SageMaker channel layout")
    p.add_argument("--out", type=Path, required=True, help="folder to create (train/, train_annotation/, ...)")
    p.add_argument("--classes", type=int, default=5, help="number of classes, background included (default 5)")
    p.add_argument("--train", type=int, default=40, help="training pairs (default 40)")
    p.add_argument("--validation", type=int, default=12, help="validation pairs (default 12)")
    p.add_argument("--size", type=int, default=160, help="typical image side in pixels (default 160)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument(
        "--rare",
        type=int,
        default=0,
        help="make the last K classes rare: short strokes or small blobs, each under 1%% of the pixels (default 0)",
    )
    p.set_defaults(func=commands.cmd_make_dataset)

    p = sub.add_parser("prepare-voc", help="turn VOCtrainval_11-May-2012.tar or VOCdevkit/ into the four channels")
    p.add_argument("source", type=Path, help="the VOC tar or an extracted VOCdevkit/ folder")
    p.add_argument("--out", type=Path, required=True, help="folder for train/, train_annotation/, ...")
    p.set_defaults(func=commands.cmd_prepare_voc)

    p = sub.add_parser("hyperparameters", help="list every hyperparameter with its default and valid values")
    p.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    p.set_defaults(func=commands.cmd_hyperparameters)

    p = sub.add_parser(
        "algorithm-spec",
        help="print a SageMaker CreateAlgorithm request (JSON) to register gluonseg as an algorithm",
        description="Prints the body of `aws sagemaker create-algorithm --cli-input-json file://spec.json`, "
        "generated from the hyperparameter schema, the metric definitions and the content types.",
    )
    p.add_argument("--training-image", required=True, metavar="URI", help="the training image in ECR")
    p.add_argument("--inference-image", required=True, metavar="URI", help="the serving image in ECR")
    p.add_argument("--name", default=None, help="AlgorithmName (default gluonseg-semantic-segmentation)")
    p.set_defaults(func=commands.cmd_algorithm_spec)

    p = sub.add_parser("train", help="run a training job on a local folder of channels (no /opt/ml needed)")
    p.add_argument("--data", type=Path, required=True, help="folder holding train/, train_annotation/, ...")
    p.add_argument("--model-dir", type=Path, required=True, help="where the model folder is written")
    p.add_argument("--hyperparameters", type=Path, help="a JSON file of hyperparameters")
    p.add_argument("--checkpoint-dir", type=Path, help="checkpoints (default MODEL_DIR/checkpoints)")
    p.add_argument("--output-dir", type=Path, help="metric history, plots, failure (default MODEL_DIR/output)")
    p.add_argument(
        "--hosts",
        type=int,
        default=1,
        help="simulate N hosts on this machine (ps-lite over 127.0.0.1), as N SageMaker instances",
    )
    p.add_argument(
        "--distribution",
        default="FullyReplicated",
        choices=("FullyReplicated", "ShardedByS3Key"),
        help="with --hosts: how the data is split between the simulated hosts",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="hyperparameters, e.g. num_classes=5 epochs=3")
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("serve", help="run the scoring server (nginx + gunicorn) on a local model folder")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder (hyperparams.json, ...)")
    p.add_argument("--port", type=int, help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--no-proxy",
        action="store_true",
        help="gunicorn alone, without nginx in front: for debugging only (slow clients can then starve /ping)",
    )
    _add_inference_options(p, serve=True, serving=True, decode=True)
    p.set_defaults(func=commands.cmd_serve)

    p = sub.add_parser("transform", help="batch transform: X -> X.out for every file under a folder")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    p.add_argument("--input", type=Path, required=True, help="folder of images (walked recursively)")
    p.add_argument("--output", type=Path, required=True, help="folder for the .out files")
    p.add_argument(
        "--accept",
        default="image/png",
        help="image/png (default), application/x-recordio-protobuf or application/x-protobuf",
    )
    p.add_argument("--content-type", default="image/jpeg", help="the request Content-Type (default image/jpeg)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    _add_inference_options(p, serving=True, decode=True)
    p.set_defaults(func=commands.cmd_transform)

    p = sub.add_parser("evaluate", help="pixel accuracy, mIOU and per-class IoU of a model on images + masks")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    p.add_argument("--images", type=Path, required=True, help="folder of images (like the validation channel)")
    p.add_argument("--masks", type=Path, required=True, help="folder of PNG masks, same base names as the images")
    p.add_argument("--label-map", type=Path, help='a label map JSON file ({"scale": N} or {"map": {...}})')
    p.add_argument("--out", type=Path, help="folder for report.json and confusion_matrix.png (default: print only)")
    _add_inference_options(p)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("predict", help="X_mask.png and X_overlay.png (colours + legend) for each image")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="JPEG or PNG pictures")
    p.add_argument("--out", type=Path, required=True, help="folder for the masks and overlays")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay (default 0.5)")
    _add_inference_options(p, decode=True)
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser(
        "quantize", help="write an INT8 model into a model folder (for the CPU, calibrated on your images)"
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder (written in place)")
    p.add_argument("--calibration", type=Path, required=True, help="folder of typical images (JPEG/PNG)")
    p.add_argument(
        "--format",
        choices=("mxnet", "onnx"),
        default="mxnet",
        help="mxnet: model-int8-* for backend mxnet; onnx: model-int8.onnx (QDQ) for OpenVINO and ONNX Runtime, "
        "kept only when its masks match FP32's on 99.5%% of the check pixels",
    )
    p.add_argument("--num", type=int, help="calibrate on the first N images (default 10 mxnet, 16 onnx)")
    p.add_argument("--check", type=Path, help="onnx: images to check it on (default: the model's check pictures)")
    p.set_defaults(func=commands.cmd_quantize)

    p = sub.add_parser("export", help="the network for other runtimes: ONNX (checked against MXNet) or MXNet symbol")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    p.add_argument("--format", choices=("onnx", "symbol"), default="onnx", help="onnx (default) or symbol")
    p.add_argument("--out", type=Path, required=True, help="folder for model.onnx + model.json (or the symbol files)")
    p.add_argument("--height", type=int, help="ONNX: a fixed input height (with --width); default: any size")
    p.add_argument("--width", type=int, help="ONNX: a fixed input width (with --height)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset, 12 or 13 (default 13)")
    p.add_argument(
        "--check-images", type=Path, help="ONNX: images to compare the file with MXNet on (default: generated)"
    )
    p.set_defaults(func=commands.cmd_export)
    return parser
