"""The job's check pictures kept in the model folder, and which pictures check and calibrate (data/check_set.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gluonseg.data.channels import Sample
from gluonseg.data.check_set import (
    CHECK_MAX_PIXELS,
    CHECK_PICTURES,
    MIN_CALIBRATION_PICTURES,
    plan_pictures,
    read_check_record,
    read_check_set,
    write_check_set,
)
from gluonseg.errors import ClientError
from gluonseg.inference.choices import TIMING_SIDE, timing_side


def samples(split: str, count: int) -> list[Sample]:
    return [
        Sample(f"{split}{i:03d}", Path(f"/{split}/{i:03d}.jpg"), Path(f"/{split}_annotation/{i:03d}.png"))
        for i in range(count)
    ]


def names(found: list[Sample]) -> set[str]:
    return {s.name for s in found}


def test_a_large_validation_channel_gives_both_sets_never_the_same_picture():
    plan = plan_pictures(samples("validation", 40), samples("train", 100))
    assert (plan.check_source, plan.calibration_source, plan.note) == ("validation", "validation", None)
    assert len(plan.check) == CHECK_PICTURES and len(plan.calibration) == 16
    assert not names(plan.check) & names(plan.calibration)
    # spread over the channel, not its first pictures
    assert plan.check[0].name == "validation000" and plan.check[-1].name == "validation039"


def test_a_small_validation_channel_checks_on_half_and_calibrates_on_training_pictures_and_says_so():
    plan = plan_pictures(samples("validation", 6), samples("train", 30))
    assert plan.check_source == "validation" and len(plan.check) == 3
    assert 6 - 3 < MIN_CALIBRATION_PICTURES
    assert plan.calibration_source == "training" and names(plan.calibration) <= names(samples("train", 30))
    assert "calibration pictures are training pictures" in plan.note


def test_no_validation_channel_uses_disjoint_training_pictures_for_both():
    plan = plan_pictures([], samples("train", 10))
    assert plan.check_source == plan.calibration_source == "training"
    assert len(plan.check) == 5 and len(plan.calibration) == 5
    assert not names(plan.check) & names(plan.calibration)
    assert "no validation pictures" in plan.note


def test_the_check_set_keeps_scaled_pictures_and_nearest_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (1000, 800, 3), dtype=np.uint8)
    big_mask = np.zeros((1000, 800), np.uint8)
    big_mask[:, 400:] = 3
    big_mask[:10] = 255
    small = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    small_mask = np.full((60, 90), 2, np.uint8)
    pairs = [(big, big_mask), (small, small_mask)]
    write_check_set(tmp_path, lambda i: pairs[i], [0, 1], ["validation/a.jpg", "validation/b.jpg"], "validation")

    kept = read_check_set(tmp_path)
    assert [k.name for k in kept] == ["00", "01"]
    height, width = kept[0].picture.shape[:2]
    assert height * width <= CHECK_MAX_PIXELS and abs(width / height - 0.8) < 0.01
    assert kept[0].label.shape == (height, width)
    assert set(np.unique(kept[0].label)) == {0, 3, 255}  # nearest: no blended class values
    assert kept[1].picture.shape == (60, 90, 3) and (kept[1].label == 2).all()
    record = read_check_record(tmp_path)
    assert record["source"] == "validation" and [p["from"] for p in record["pictures"]] == [
        "validation/a.jpg",
        "validation/b.jpg",
    ]
    assert not list(tmp_path.glob(".check-*"))  # written beside, moved in whole


def test_a_folder_without_check_pictures_reads_as_none(tmp_path: Path):
    assert read_check_set(tmp_path) == []


def test_the_timing_side_is_480_unless_set_and_must_be_a_multiple_of_8(monkeypatch):
    monkeypatch.delenv("GLUONSEG_AUTO_TIMING_SIDE", raising=False)
    assert timing_side() == TIMING_SIDE == 480
    assert timing_side("640") == 640
    for bad in ("abc", "100", "32", "4096"):
        with pytest.raises(ClientError, match="GLUONSEG_AUTO_TIMING_SIDE"):
            timing_side(bad)
