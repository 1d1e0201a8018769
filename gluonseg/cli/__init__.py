"""`gluonseg`: the user's command line, and the containers' entry points (one layer above everything else;
nothing in the package imports it). `parser` holds the one argument parser, `commands` what each command
does, `container` the `docker run IMAGE train|serve` dispatch."""

from __future__ import annotations

import sys

from gluonseg.cli.commands import hyperparameters_from_args, inference_options, parse_key_values
from gluonseg.cli.parser import build_parser
from gluonseg.errors import ClientError, GluonsegError

__all__ = ["build_parser", "hyperparameters_from_args", "inference_options", "main", "parse_key_values"]


def main(argv: list[str] | None = None) -> int:
    from gluonseg.logging_setup import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GluonsegError as exc:
        print(exc.failure_text(), file=sys.stderr)
        return 2 if isinstance(exc, ClientError) else 1
