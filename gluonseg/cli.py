"""`gluonseg`: the user's command line. Thin: parse flags, call the modules that do the work."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gluonseg.errors import ClientError, GluonsegError

log = logging.getLogger("gluonseg.cli")


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from gluonseg.data.synthetic import make_dataset

    summary = make_dataset(
        args.out, classes=args.classes, train=args.train, validation=args.validation, size=args.size, seed=args.seed
    )
    print(
        f"wrote {summary['train']} training and {summary['validation']} validation pairs "
        f"({summary['classes']} classes) to {args.out}"
    )
    return 0


def _cmd_prepare_voc(args: argparse.Namespace) -> int:
    from gluonseg.data.voc import prepare_voc

    summary = prepare_voc(args.source, args.out)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_hyperparameters(args: argparse.Namespace) -> int:
    from gluonseg.hyperparameters import markdown_table, text_listing

    print(markdown_table() if args.markdown else text_listing(), end="" if not args.markdown else "\n")
    return 0


def parse_key_values(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"'{pair}' is not KEY=VALUE")
        values[key.strip()] = value
    return values


def hyperparameters_from_args(hyperparameters_file: Path | None, overrides: list[str]) -> dict[str, str]:
    """`--hyperparameters FILE.json` then `KEY=VALUE` overrides, as the strings SageMaker would send."""
    from gluonseg.environment import read_json_file

    raw: dict[str, str] = {}
    if hyperparameters_file:
        data = read_json_file(hyperparameters_file, "hyperparameters file")
        if not isinstance(data, dict):
            raise ClientError(f"hyperparameters file {hyperparameters_file} must hold a JSON object")
        raw.update({k: str(v) for k, v in data.items()})
    raw.update(parse_key_values(overrides))
    return raw


def _cmd_train(args: argparse.Namespace) -> int:
    from gluonseg.environment import Environment
    from gluonseg.errors import run_reporting_failures
    from gluonseg.train_entry import run_training_job, run_until_stopped, train_command

    raw = hyperparameters_from_args(args.hyperparameters, args.overrides)
    args.model_dir.mkdir(parents=True, exist_ok=True)
    if args.hosts > 1:
        from gluonseg.training.distributed.local import run_local_cluster

        return run_local_cluster(
            args.hosts,
            args.data,
            args.model_dir,
            raw,
            checkpoint_dir=args.checkpoint_dir,
            output_dir=args.output_dir,
            distribution=args.distribution,
            host_command=train_command(),
        )
    output = args.output_dir or args.model_dir / "output"
    env = Environment(
        base_dir=args.model_dir / ".job",
        data_dir_override=args.data,
        model_dir_override=args.model_dir,
        output_dir_override=output,
        checkpoint_dir_override=args.checkpoint_dir or args.model_dir / "checkpoints",
    )
    env.config_dir.mkdir(parents=True, exist_ok=True)
    env.hyperparameters_path.write_text(json.dumps(raw))
    outcome = {"code": 0}

    def job() -> None:
        outcome["code"] = run_until_stopped(lambda: run_training_job(env))

    return run_reporting_failures(job, lambda: env.failure_path) or outcome["code"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from serve.entry import run, settings_with
    from serve.settings import ServerSettings

    settings = settings_with(
        ServerSettings.from_env(),
        model_dir=args.model_dir,
        port=args.port,
        workers=args.workers,
        proxy=False if args.no_proxy else None,
        **_inference_options(args),
    )
    if not (settings.model_dir / "hyperparams.json").exists():
        raise ClientError(f"--model-dir {settings.model_dir} is not a model folder (no hyperparams.json)")
    return run(settings, host=args.host)


def _cmd_transform(args: argparse.Namespace) -> int:
    from serve.batch import transform_folder

    results = transform_folder(
        args.model_dir,
        args.input,
        args.output,
        accept=args.accept,
        content_type=args.content_type,
        jobs=args.jobs,
        **_inference_options(args),
    )
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} file(s) transformed into {args.output}")
    for r in failed:
        print(f"FAILED {r.source}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from gluonseg.evaluate import evaluate_folder, format_report

    report = evaluate_folder(
        args.model_dir, args.images, args.masks, label_map_file=args.label_map, out=args.out, **_inference_options(args)
    )
    print(format_report(report))
    if args.out:
        print(f"wrote {args.out / 'report.json'} and {args.out / 'confusion_matrix.png'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from gluonseg.visualize import predict_files

    results = predict_files(args.model_dir, args.images, args.out, alpha=args.alpha, **_inference_options(args))
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} image(s) predicted into {args.out}")
    for r in failed:
        print(f"FAILED {r.source}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from gluonseg.inference.precision import describe_export, export_int8

    record = export_int8(args.model_dir, args.calibration, args.num)
    print(describe_export(args.model_dir, record))
    return 0


def _add_inference_options(p: argparse.ArgumentParser, serve: bool = False) -> None:
    """--precision/--calibration/--scale/--max-native-pixels, as the server's GLUONSEG_* variables."""
    unset = " (default: $%s, else %s)" if serve else " (default %s)"

    def default(var: str, value: str) -> str:
        return unset % (var, value) if serve else unset % value

    p.add_argument(
        "--precision",
        choices=("fp32", "int8", "bf16"),
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
        choices=("native", "crop"),
        default=None,
        help="native: each image at its own size, as GluonCV's predict(); crop: short side resized to "
        "crop_size and tiled (faster on large pictures)" + default("GLUONSEG_INFERENCE_SCALE", "native"),
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


def _inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The inference flags given, by the names load_predictor, the handler Context and ServerSettings share;
    an absent flag keeps the default."""
    if args.native_max_pixels is not None and args.native_max_pixels < 1:
        raise ClientError(f"--max-native-pixels must be at least 1, got {args.native_max_pixels}")
    given = {
        "precision": args.precision,
        "calibration_dir": args.calibration,
        "scale": args.scale,
        "native_max_pixels": args.native_max_pixels,
    }
    return {name: value for name, value in given.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gluonseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="generate a learnable dataset in the SageMaker channel layout")
    p.add_argument("--out", type=Path, required=True, help="folder to create (train/, train_annotation/, ...)")
    p.add_argument("--classes", type=int, default=5, help="number of classes, background included (default 5)")
    p.add_argument("--train", type=int, default=40, help="training pairs (default 40)")
    p.add_argument("--validation", type=int, default=12, help="validation pairs (default 12)")
    p.add_argument("--size", type=int, default=160, help="typical image side in pixels (default 160)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("prepare-voc", help="turn VOCtrainval_11-May-2012.tar or VOCdevkit/ into the four channels")
    p.add_argument("source", type=Path, help="the VOC tar or an extracted VOCdevkit/ folder")
    p.add_argument("--out", type=Path, required=True, help="folder for train/, train_annotation/, ...")
    p.set_defaults(func=_cmd_prepare_voc)

    p = sub.add_parser("hyperparameters", help="list every hyperparameter with its default and valid values")
    p.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    p.set_defaults(func=_cmd_hyperparameters)

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
    p.set_defaults(func=_cmd_train)

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
    _add_inference_options(p, serve=True)
    p.set_defaults(func=_cmd_serve)

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
    _add_inference_options(p)
    p.set_defaults(func=_cmd_transform)

    p = sub.add_parser("evaluate", help="pixel accuracy, mIOU and per-class IoU of a model on images + masks")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    p.add_argument("--images", type=Path, required=True, help="folder of images (like the validation channel)")
    p.add_argument("--masks", type=Path, required=True, help="folder of PNG masks, same base names as the images")
    p.add_argument("--label-map", type=Path, help='a label map JSON file ({"scale": N} or {"map": {...}})')
    p.add_argument("--out", type=Path, help="folder for report.json and confusion_matrix.png (default: print only)")
    _add_inference_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="X_mask.png and X_overlay.png (colours + legend) for each image")
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="JPEG or PNG pictures")
    p.add_argument("--out", type=Path, required=True, help="folder for the masks and overlays")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay (default 0.5)")
    _add_inference_options(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "quantize", help="write model-int8-* into a model folder (INT8 for the CPU, calibrated on your images)"
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder (written in place)")
    p.add_argument("--calibration", type=Path, required=True, help="folder of typical images (JPEG/PNG)")
    p.add_argument("--num", type=int, default=10, help="calibrate on the first N images (default 10)")
    p.set_defaults(func=_cmd_quantize)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gluonseg.logging_setup import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GluonsegError as exc:
        print(exc.failure_text(), file=sys.stderr)
        return 2 if isinstance(exc, ClientError) else 1


if __name__ == "__main__":
    sys.exit(main())
