"""`#quality_metric` log lines in the Amazon built-in style, and the MetricDefinitions that read them.

SageMaker publishes a metric by running each definition's regex over the job's log and taking the
first capture group (spec §10.2). The definitions ship in `gluonseg/metric_definitions.json`:
- each regex includes the ", " before the metric phrase and the unit, so `train throughput` never
  matches a `validation throughput` line and no metric matches another's line;
- the value must start with a digit (after an optional sign), so a non-finite value, printed as
  `nan`, `inf` or `-inf`, is not published rather than published as garbage like "-".
Values are written with 6 significant digits (`%.6g`), e.g. 0.4321, 41.2, 1e-05.

After the last epoch the job writes the saved (best) model's validation scores once more, as
`#quality_metric: host=algo-1, best epoch=K, validation mIOU <score>=...`: the same regexes read it,
so the last value SageMaker publishes (the one automatic model tuning uses) is the model's score,
and `best epoch=K` says it is not one more epoch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

METRIC_DEFINITIONS_FILE = "metric_definitions.json"

# (keyword argument of log_epoch_metrics, phrase in the line, unit), in the order the lines are written.
EPOCH_METRICS = (
    ("train_loss", "train loss", "loss"),
    ("train_throughput", "train throughput", "samples/sec"),
    ("pixel_accuracy", "validation pixel_accuracy", "score"),
    ("miou", "validation mIOU", "score"),
    ("val_throughput", "validation throughput", "samples/sec"),
)


def format_value(value: float) -> str:
    return f"{float(value):.6g}"


def quality_metric_line(host: str, epoch: int, name: str, unit: str, value: float, best: bool = False) -> str:
    """`#quality_metric: host=algo-1, epoch=3, validation mIOU <score>=0.6543` (`best epoch=3` for
    the best model's summary)."""
    where = f"best epoch={int(epoch)}" if best else f"epoch={int(epoch)}"
    return f"#quality_metric: host={host}, {where}, {name} <{unit}>={format_value(value)}"


def log_epoch_metrics(
    logger_or_print: logging.Logger | Callable[[str], Any],
    host: str,
    epoch: int,
    train_loss: float | None = None,
    train_throughput: float | None = None,
    pixel_accuracy: float | None = None,
    miou: float | None = None,
    val_throughput: float | None = None,
) -> list[str]:
    """Write one line per given metric (None = skipped) via `logger.info` or a print-like callable."""
    values = {
        "train_loss": train_loss,
        "train_throughput": train_throughput,
        "pixel_accuracy": pixel_accuracy,
        "miou": miou,
        "val_throughput": val_throughput,
    }
    emit = logger_or_print.info if hasattr(logger_or_print, "info") else logger_or_print
    lines = []
    for key, name, unit in EPOCH_METRICS:
        if values[key] is not None:
            line = quality_metric_line(host, epoch, name, unit, values[key])
            emit(line)
            lines.append(line)
    return lines


def log_best_metrics(
    logger_or_print: logging.Logger | Callable[[str], Any],
    host: str,
    best_epoch: int,
    pixel_accuracy: float | None,
    miou: float | None,
) -> list[str]:
    """The summary after the last epoch: the best model's validation scores, `best epoch=K`."""
    emit = logger_or_print.info if hasattr(logger_or_print, "info") else logger_or_print
    lines = []
    for name, value in (("validation pixel_accuracy", pixel_accuracy), ("validation mIOU", miou)):
        if value is not None:
            lines.append(quality_metric_line(host, best_epoch, name, "score", value, best=True))
            emit(lines[-1])
    return lines


def load_metric_definitions() -> list[dict[str, str]]:
    """The packaged MetricDefinitions: [{"Name": "validation:mIOU", "Regex": ...}, ...]."""
    text = resources.files("gluonseg").joinpath(METRIC_DEFINITIONS_FILE).read_text(encoding="utf-8")
    return json.loads(text)
