"""#quality_metric lines and the shipped MetricDefinitions regexes that SageMaker runs over the log."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

import gluonseg
from gluonseg.training.metrics_log import (
    load_metric_definitions,
    log_best_metrics,
    log_epoch_metrics,
    quality_metric_line,
)

NAMES = ["train:loss", "train:throughput", "validation:pixel_accuracy", "validation:mIOU", "validation:throughput"]


def extract(log_text: str) -> dict[str, list[float]]:
    """What SageMaker does: every match of each regex, first group parsed as a float."""
    found: dict[str, list[float]] = {}
    for definition in load_metric_definitions():
        pattern = re.compile(definition["Regex"])
        found[definition["Name"]] = [float(m.group(1)) for m in pattern.finditer(log_text)]
    return found


def test_line_format():
    assert (
        quality_metric_line("algo-1", 3, "train loss", "loss", 0.4321)
        == "#quality_metric: host=algo-1, epoch=3, train loss <loss>=0.4321"
    )
    assert (
        quality_metric_line("algo-2", 0, "validation mIOU", "score", 0.6543)
        == "#quality_metric: host=algo-2, epoch=0, validation mIOU <score>=0.6543"
    )
    assert quality_metric_line("algo-1", 1, "train loss", "loss", 1e-05).endswith("<loss>=1e-05")
    assert quality_metric_line("algo-1", 1, "train throughput", "samples/sec", 41.2).endswith("=41.2")


def test_log_epoch_metrics_lines_in_order_and_skips_none():
    printed: list[str] = []
    lines = log_epoch_metrics(
        printed.append,
        "algo-1",
        3,
        train_loss=0.4321,
        train_throughput=41.2,
        pixel_accuracy=0.9123,
        miou=0.6543,
        val_throughput=55.0,
    )
    assert (
        printed
        == lines
        == [
            "#quality_metric: host=algo-1, epoch=3, train loss <loss>=0.4321",
            "#quality_metric: host=algo-1, epoch=3, train throughput <samples/sec>=41.2",
            "#quality_metric: host=algo-1, epoch=3, validation pixel_accuracy <score>=0.9123",
            "#quality_metric: host=algo-1, epoch=3, validation mIOU <score>=0.6543",
            "#quality_metric: host=algo-1, epoch=3, validation throughput <samples/sec>=55",
        ]
    )
    only = log_epoch_metrics(printed.append, "algo-1", 4, miou=0.5)
    assert only == ["#quality_metric: host=algo-1, epoch=4, validation mIOU <score>=0.5"]


def test_log_epoch_metrics_through_a_logger(caplog):
    logger = logging.getLogger("gluonseg.test.metrics_log")
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_epoch_metrics(logger, "algo-1", 2, train_loss=0.25)
    assert [r.getMessage() for r in caplog.records] == ["#quality_metric: host=algo-1, epoch=2, train loss <loss>=0.25"]


def test_definitions_shape_and_packaging():
    defs = load_metric_definitions()
    assert [d["Name"] for d in defs] == NAMES
    for d in defs:
        assert set(d) == {"Name", "Regex"}
        assert 1 <= len(d["Name"]) <= 255 and 1 <= len(d["Regex"]) <= 500  # SageMaker's limits
        assert re.compile(d["Regex"]).groups == 1
    # The loader reads the file that ships inside the package (setup.py package_data "*.json").
    on_disk = json.loads((Path(gluonseg.__file__).parent / "metric_definitions.json").read_text())
    assert on_disk == defs


def _realistic_log(epochs: list[dict]) -> str:
    out = [
        "Running default environment configuration script",
        "[05/01/2024 10:00:00 INFO 140] Reading hyperparameters: {'epochs': '2', 'lr_scheduler': 'poly'}",
        "[05/01/2024 10:00:01 INFO 140] train loss is computed per pixel; validation throughput follows",
        '[05/01/2024 10:00:02 INFO 140] #metrics {"Metrics": {"train loss": {"sum": 0.9}}}',
    ]
    for e, values in enumerate(epochs):
        stamp = f"[05/01/2024 10:0{e + 1}:00 INFO 140250] "
        out.append(stamp + f"Epoch[{e}] Batch [10]\tSpeed: 40.1 samples/sec\tloss=0.7")
        printed: list[str] = []
        log_epoch_metrics(printed.append, "algo-1", e, **values)
        out.extend(stamp + line for line in printed)
        out.append(stamp + "Saved checkpoint to /opt/ml/checkpoints/epoch_1.params")
    out.append("[05/01/2024 10:09:00 INFO 140250] #quality_metric: host=algo-1, train loss <loss>=nan")
    out.append("[05/01/2024 10:09:00 INFO 140250] #quality_metric: host=algo-1, validation mIOU <score>=-inf")
    return "\n".join(out) + "\n"


def test_regexes_extract_exact_values_from_a_realistic_log():
    epochs = [
        dict(train_loss=1.2345678, train_throughput=41.2, pixel_accuracy=0.91234, miou=0.65432, val_throughput=55.0),
        dict(train_loss=1e-05, train_throughput=1234567.0, pixel_accuracy=1.0, miou=0.0, val_throughput=0.5),
    ]
    found = extract(_realistic_log(epochs))
    key_of = {
        "train:loss": "train_loss",
        "train:throughput": "train_throughput",
        "validation:pixel_accuracy": "pixel_accuracy",
        "validation:mIOU": "miou",
        "validation:throughput": "val_throughput",
    }
    for name, key in key_of.items():
        # Six significant digits are written; compare with the value rounded the same way, independently.
        assert found[name] == [pytest.approx(float(f"{e[key]:.5e}"), rel=1e-12) for e in epochs], name
    assert found["train:loss"][0] == pytest.approx(1.23457, rel=1e-12)
    assert found["train:throughput"][1] == pytest.approx(1.23457e6, rel=1e-12)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_values_are_not_published(value):
    line = quality_metric_line("algo-1", 1, "validation mIOU", "score", float(value))
    assert line.endswith(f"<score>={value}")
    assert all(v == [] for v in extract(line + "\n").values())


def test_no_regex_matches_another_metrics_line():
    lines = log_epoch_metrics(
        lambda _: None,
        "algo-1",
        7,
        train_loss=0.1,
        train_throughput=2.0,
        pixel_accuracy=0.3,
        miou=0.4,
        val_throughput=5.0,
    )
    assert len(lines) == len(NAMES)
    defs = load_metric_definitions()
    for i, line in enumerate(lines):
        matching = [d["Name"] for d in defs if re.search(d["Regex"], line)]
        assert matching == [NAMES[i]], line


def test_signed_and_exponent_values_parse():
    for value, text in [(-0.5, "-0.5"), (2.5e-07, "2.5e-07"), (3e20, "3e+20")]:
        line = quality_metric_line("algo-1", 0, "train loss", "loss", value)
        assert line.endswith("=" + text)
        assert extract(line)["train:loss"] == [value]


def test_the_best_model_summary_says_best_epoch_and_the_shipped_regexes_still_read_it():
    """A 2-epoch job used to print `epoch=1` twice with different values; the last is the best model's."""
    printed: list[str] = []
    log_epoch_metrics(printed.append, "algo-1", 0, 0.9, 10.0, 0.80, 0.40, 20.0)
    log_epoch_metrics(printed.append, "algo-1", 1, 0.8, 10.0, 0.78, 0.35, 20.0)
    summary = log_best_metrics(printed.append, "algo-1", 0, 0.80, 0.40)
    assert summary == [
        "#quality_metric: host=algo-1, best epoch=0, validation pixel_accuracy <score>=0.8",
        "#quality_metric: host=algo-1, best epoch=0, validation mIOU <score>=0.4",
    ]
    found = extract("\n".join(printed))
    # The last value of each validation score (what tuning and FinalMetricDataList read) is the best model's.
    assert found["validation:mIOU"] == [0.40, 0.35, 0.40]
    assert found["validation:pixel_accuracy"] == [0.80, 0.78, 0.80]
    assert found["train:loss"] == [0.9, 0.8]  # no other metric reads the summary
    assert found["validation:throughput"] == [20.0, 20.0]
    epoch_lines = [line for line in printed if re.search(r"host=algo-1, epoch=1,", line)]
    assert len(epoch_lines) == 5  # epoch 1 appears once, not twice


def test_the_readme_documents_the_summary_line():
    readme = (Path(gluonseg.__file__).resolve().parents[1] / "README.md").read_text()
    assert "best epoch=" in readme
