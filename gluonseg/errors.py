"""The two kinds of failure a job can end with, and the one place that reports them.

SageMaker built-ins prefix `FailureReason` with `ClientError:` (the user's data or settings)
or `AlgorithmError:` (our fault). Only the first 1024 characters of `output/failure` become the
reason, so the useful sentence comes first and the traceback (for AlgorithmError) goes to the log.

The request errors at the end are typed by problem only: serve/app.py maps each type to its HTTP status.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FAILURE_REASON_LIMIT = 1024
CLIENT_ERROR_EXIT_CODE = 2
ALGORITHM_ERROR_EXIT_CODE = 1


class GluonsegError(Exception):
    """Base class: a failure with a message meant for the user."""

    prefix = "Error"

    def failure_text(self) -> str:
        return f"{self.prefix}: {self}"


class ClientError(GluonsegError):
    """The user's mistake: hyperparameters, data, label maps, model channel."""

    prefix = "ClientError"


class AlgorithmError(GluonsegError):
    """A fault on our side, or in the machine (disk full, worker died)."""

    prefix = "AlgorithmError"


def error_summary(exc: BaseException, limit: int = 200) -> str:
    """The one line of an exception that says what went wrong, at most `limit` characters.

    MXNet's errors carry a C++ stack: "Traceback (most recent call last):", frames, then
    "MXNetError: <the reason>" last. Others say it on their first line.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line.removeprefix("MXNetError: ")[:limit]


def list_with_limit(items: list[str], limit: int = 20) -> str:
    """Name the first `limit` items, then say how many more there are."""
    shown = ", ".join(items[:limit])
    rest = len(items) - limit
    return f"{shown} (and {rest} more)" if rest > 0 else shown


def write_failure(path: Path, text: str) -> None:
    """Write the failure file; never let a failure to report hide the original failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:  # pragma: no cover - read-only or full disk
        log.error("could not write %s: %s", path, exc)


def run_reporting_failures(job: Callable[[], None], failure_path: Callable[[], Path]) -> int:
    """Run `job`; turn any exception into a failure file, a log line and an exit code.

    `failure_path` is a callable so that a broken environment (the thing that tells us where
    the failure file lives) is itself reported.
    """
    try:
        job()
        return 0
    except GluonsegError as exc:
        text = exc.failure_text()
        code = CLIENT_ERROR_EXIT_CODE if isinstance(exc, ClientError) else ALGORITHM_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        text = "AlgorithmError: interrupted"
        code = ALGORITHM_ERROR_EXIT_CODE
    except MemoryError:
        text = "AlgorithmError: out of memory; use a smaller mini_batch_size or crop_size, or a larger instance"
        code = ALGORITHM_ERROR_EXIT_CODE
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        log.error("unexpected failure:\n%s", traceback.format_exc())
        text = f"AlgorithmError: {type(exc).__name__}: {exc}"
        code = ALGORITHM_ERROR_EXIT_CODE
    try:
        path = failure_path()
    except Exception:  # noqa: BLE001
        path = Path("/opt/ml/output/failure")
    write_failure(path, text)
    print(text[:FAILURE_REASON_LIMIT], file=sys.stderr)
    return code


class RequestError(ClientError):
    """A bad inference request: its body cannot be read or decoded (the server's 400)."""


class RequestTooLarge(RequestError):
    """The request body, or the image it declares, is over a configured bound."""


class UnsupportedContentType(RequestError):
    """The request's Content-Type is not one the codecs decode (or is missing)."""


class NotAcceptable(RequestError):
    """No response type the codecs encode satisfies the Accept header (or the configured default)."""


class ProbabilitiesTooLarge(RequestTooLarge):
    """The class probabilities asked for would pass the configured bound (GLUONSEG_MAX_PROBABILITIES_MB)."""
