"""`gluonseg evaluate`'s report: each class's pixel share next to its IoU, rare classes marked, training stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gluonseg.evaluate import build_report, format_report
from gluonseg.metrics import ConfusionMatrix
from gluonseg.plots import RARE_COLOUR, plot_confusion_matrix


def confusion() -> ConfusionMatrix:
    cm = ConfusionMatrix(4)
    # rows: truth. Class 0: 990 pixels, class 1: 5 (rare), class 2: 0 (absent), class 3: 400
    cm.matrix[:] = np.array([[980, 5, 0, 5], [3, 2, 0, 0], [0, 0, 0, 0], [10, 0, 0, 390]])
    return cm


def test_report_gives_each_class_its_pixel_share_and_marks_the_rare_ones():
    report = build_report(confusion(), ["bg", "crack", "absent", "shape"], Path("m"), 3, 1.0)
    total = 1395
    assert report["pixel_share_per_class"] == {
        "bg": 990 / total,
        "crack": 5 / total,
        "absent": 0.0,
        "shape": 400 / total,
    }
    assert report["rare_classes"] == ["crack"]  # under 1% and present; an absent class is not "rare"
    assert report["training_pixel_share_per_class"] is None and report["class_weights_per_class"] is None
    text = format_report(report)
    crack = next(line for line in text.splitlines() if " crack " in line)
    assert (
        crack.startswith("  1* crack") and f"{5 / total:9.3%}" in crack and "0.2000" in crack
    )  # 2 / (7 predicted + 5 true - 2)
    assert "* rare: under 1% of the evaluated masks' labelled pixels" in text
    assert "train share" not in text


def test_report_adds_the_training_share_and_weights_from_class_stats():
    stats = {"pixel_share": [0.9, 0.004, 0.001, 0.095], "weights": [0.1, 10.0, 10.0, 1.0]}
    report = build_report(confusion(), ["bg", "crack", "absent", "shape"], Path("m"), 3, 1.0, stats)
    assert report["training_pixel_share_per_class"]["crack"] == 0.004
    assert report["class_weights_per_class"]["shape"] == 1.0
    text = format_report(report)
    header = next(line for line in text.splitlines() if line.lstrip().startswith("id"))
    assert "px share" in header and "train share" in header and "weight" in header
    crack = next(line for line in text.splitlines() if " crack " in line)
    assert "0.400%" in crack and "     10" in crack
    # stats of another class count (a mismatched folder) are left out rather than misattributed
    odd = build_report(confusion(), ["bg", "crack", "absent", "shape"], Path("m"), 3, 1.0, {"pixel_share": [1.0]})
    assert odd["training_pixel_share_per_class"] is None


def test_confusion_matrix_picture_marks_rare_classes(tmp_path):
    matrix = confusion().matrix
    names = ["bg", "crack", "absent", "shape"]
    plot_confusion_matrix(matrix, names, tmp_path / "plain.png")
    plot_confusion_matrix(matrix, names, tmp_path / "rare.png", rare=[1])
    red = np.array([214, 39, 40])  # matplotlib's tab:red
    assert RARE_COLOUR == "tab:red"

    def red_pixels(path: Path) -> int:
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(pixels - red).sum(axis=2) < 60).sum())

    assert red_pixels(tmp_path / "plain.png") == 0
    assert red_pixels(tmp_path / "rare.png") > 50  # the two tick labels and the note
