"""The INT8 step's guard: no INT8 model without pictures to calibrate it on and other pictures to check it on."""

import logging

import numpy as np
from PIL import Image

from gluonseg.data.channels import Sample
from gluonseg.data.check_set import write_check_set
from gluonseg.int8_job import make_int8_model


def samples(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for i in range(count):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.jpg")
        found.append(Sample(f"{i}", folder / f"{i}.jpg", folder / f"{i}.png"))
    return found


def test_no_check_set_makes_no_int8_model_and_says_why(tmp_path, caplog):
    model = tmp_path / "model"
    model.mkdir()
    with caplog.at_level(logging.WARNING, logger="gluonseg.train"):
        made = make_int8_model(model, samples(tmp_path / "v", 6), samples(tmp_path / "t", 6))
    assert made is False
    assert "too few pictures to calibrate it and check it on others" in caplog.text
    assert not list(model.glob("model-int8*"))


def test_a_check_set_without_calibration_pictures_makes_no_int8_model(tmp_path, caplog):
    model = tmp_path / "model"
    model.mkdir()
    pair = (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    write_check_set(model, lambda i: pair, [0], ["a"], "training")
    with caplog.at_level(logging.WARNING, logger="gluonseg.train"):
        made = make_int8_model(model, [], [])  # a check set kept, but no channel picture left to calibrate on
    assert made is False
    assert "too few pictures" in caplog.text
    assert not list(model.glob("model-int8*"))
