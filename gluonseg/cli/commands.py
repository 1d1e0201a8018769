"""What each `gluonseg` command does: read its parsed flags, call the modules that do the work, print."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gluonseg.errors import ClientError

log = logging.getLogger("gluonseg.cli")


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from gluonseg.data.synthetic import make_dataset

    summary = make_dataset(
        args.out,
        classes=args.classes,
        train=args.train,
        validation=args.validation,
        size=args.size,
        seed=args.seed,
        rare=args.rare,
    )
    print(
        f"wrote {summary['train']} training and {summary['validation']} validation pairs "
        f"({summary['classes']} classes) to {args.out}"
    )
    if summary["rare_classes"]:
        shares = ", ".join(f"{c} {summary['pixel_share'][c]:.2%}" for c in summary["rare_classes"])
        print(f"rare classes (share of the labelled training pixels): {shares}")
    return 0


def cmd_prepare_voc(args: argparse.Namespace) -> int:
    from gluonseg.data.voc import prepare_voc

    summary = prepare_voc(args.source, args.out)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_hyperparameters(args: argparse.Namespace) -> int:
    from gluonseg.docs import markdown_table, text_listing

    print(markdown_table() if args.markdown else text_listing(), end="" if not args.markdown else "\n")
    return 0


def cmd_algorithm_spec(args: argparse.Namespace) -> int:
    import json

    from gluonseg.algorithm_spec import DEFAULT_NAME, algorithm_spec

    print(json.dumps(algorithm_spec(args.training_image, args.inference_image, args.name or DEFAULT_NAME), indent=2))
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


def cmd_train(args: argparse.Namespace) -> int:
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


def cmd_serve(args: argparse.Namespace) -> int:
    from serve.entry import run, settings_with
    from serve.settings import ServerSettings

    settings = settings_with(
        ServerSettings.from_env(),
        model_dir=args.model_dir,
        port=args.port,
        workers=args.workers,
        proxy=False if args.no_proxy else None,
        **inference_options(args),
    )
    if not (settings.model_dir / "hyperparams.json").exists():
        raise ClientError(f"--model-dir {settings.model_dir} is not a model folder (no hyperparams.json)")
    return run(settings, host=args.host)


def cmd_transform(args: argparse.Namespace) -> int:
    from serve.batch import transform_folder

    results = transform_folder(
        args.model_dir,
        args.input,
        args.output,
        accept=args.accept,
        content_type=args.content_type,
        jobs=args.jobs,
        **inference_options(args),
    )
    return _report_files(results, "file(s) transformed", args.output)


def _report_files(results: list[Any], done: str, into: Path) -> int:
    """One line for the count, one per failed file (stderr); exit 1 if any failed."""
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} {done} into {into}")
    for r in failed:
        print(f"FAILED {r.source}: {r.reason}", file=sys.stderr)
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gluonseg.evaluate import evaluate_folder, format_report

    report = evaluate_folder(
        args.model_dir, args.images, args.masks, label_map_file=args.label_map, out=args.out, **inference_options(args)
    )
    print(format_report(report))
    if args.out:
        print(f"wrote {args.out / 'report.json'} and {args.out / 'confusion_matrix.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from gluonseg.visualize import predict_files

    results = predict_files(args.model_dir, args.images, args.out, alpha=args.alpha, **inference_options(args))
    return _report_files(results, "image(s) predicted", args.out)


def cmd_quantize(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from gluonseg.inference.int8_onnx import INT8_ONNX, describe_int8, quantize_folder

        record = quantize_folder(args.model_dir, args.calibration, args.num or 16, args.check)
        if not record["kept"]:
            raise ClientError(f"no INT8 model kept: {record['why_not']} ({describe_int8(record)})")
        print(f"wrote {args.model_dir / INT8_ONNX}: {describe_int8(record)}")
        return 0
    if args.check is not None:
        raise ClientError("--check applies to --format onnx only")
    from gluonseg.inference.precision import describe_export, export_int8

    record = export_int8(args.model_dir, args.calibration, args.num or 10)
    print(describe_export(args.model_dir, record))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "symbol":
        from gluonseg.artifacts import SYMBOL_FILE, SYMBOL_PARAMS, export_symbol, read_model_dir

        if args.height is not None or args.width is not None:
            raise ClientError("--height/--width apply to --format onnx only")
        artifact = read_model_dir(args.model_dir)
        args.out.mkdir(parents=True, exist_ok=True)
        export_symbol(args.out, artifact.hp, artifact.params_path)
        print(f"wrote {args.out / SYMBOL_FILE} and {args.out / SYMBOL_PARAMS}")
        return 0
    from gluonseg.inference.onnx_export import ONNX_FILE, RECORD_FILE, describe_record, export_onnx

    record = export_onnx(args.model_dir, args.out, args.height, args.width, args.opset, args.check_images)
    print(f"wrote {args.out / ONNX_FILE} and {args.out / RECORD_FILE}: {describe_record(record)}")
    return 0


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The inference flags given, by the names load_predictor, the handler Context and ServerSettings share;
    an absent flag keeps the default."""
    from gluonseg.inference.tta import parse_tta
    from serve.settings import probability_bytes, slide_options

    if args.native_max_pixels is not None and args.native_max_pixels < 1:
        raise ClientError(f"--max-native-pixels must be at least 1, got {args.native_max_pixels}")
    if getattr(args, "decode_max_pixels", None) is not None and args.decode_max_pixels < 1:
        raise ClientError(f"--max-pixels must be at least 1, got {args.decode_max_pixels}")

    def text(value: int | None) -> str | None:
        return None if value is None else str(value)

    long_side, window, stride = slide_options(
        text(args.slide_long_side),
        text(args.slide_window),
        text(args.slide_stride),
        ("--slide-long-side", "--window", "--stride"),
    )
    given = {
        "backend": args.backend,
        "precision": args.precision,
        "calibration_dir": args.calibration,
        "scale": args.scale,
        "native_max_pixels": args.native_max_pixels,
        "slide_long_side": long_side,
        "slide_window": window,
        "slide_stride": stride,
        "tta": None if args.tta is None else parse_tta(args.tta, "--tta"),
        "max_probability_bytes": None
        if args.max_probabilities_mb is None
        else probability_bytes(str(args.max_probabilities_mb), "--max-probabilities-mb"),
        "decode_max_pixels": getattr(args, "decode_max_pixels", None),
    }
    return {name: value for name, value in given.items() if value is not None}
