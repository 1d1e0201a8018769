import json

import numpy as np
import pytest

from gluonseg.data.label_map import LabelMap, load_label_map, parse_label_map
from gluonseg.errors import ClientError

RAW = np.arange(256, dtype=np.uint8)


def test_default_is_identity_when_file_or_channel_missing(tmp_path):
    assert load_label_map(None, "train").is_identity
    assert load_label_map(tmp_path, "validation").is_identity


@pytest.mark.parametrize("scale", [3, "3", " 3 ", 3.0])
def test_scale_floors_and_keeps_255(scale):
    lm = parse_label_map({"scale": scale}, "f")
    assert list(lm.apply(np.array([0, 3, 6, 7, 8, 255], np.uint8))) == [0, 1, 2, 2, 2, 255]


def test_map_form_docs_example_and_unmapped_values_become_ignore():
    lm = parse_label_map({"map": {"0": 5, "1": 0, "2": 2}}, "f")
    assert list(lm.apply(np.array([0, 5, 2, 3, 255], np.uint8))) == [1, 0, 2, 255, 255]
    lm = parse_label_map({"map": {"0": 0, "1": 255}}, "f")  # 255 can be mapped to a class on purpose
    assert list(lm.apply(np.array([0, 255, 1], np.uint8))) == [0, 1, 255]


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"scale": 0}, "'scale' must be between 1 and 255"),
        ({"scale": "x"}, "'scale' must be an integer"),
        ({"scale": True}, "'scale' must be an integer"),
        ({"scale": 1, "map": {"0": 0}}, "use either 'scale' or 'map'"),
        ({"colors": {}}, "unknown key(s) 'colors'"),
        ({}, "must have 'scale' or 'map'"),
        ([1, 2], "must be a JSON object"),
        ({"map": {}}, "'map' must be a non-empty object"),
        ({"map": {"x": 1}}, "class id 'x' must be an integer"),
        ({"map": {"0": 300}}, "pixel value 300 for class 0 is outside 0..255"),
        ({"map": {"255": 3}}, "class id 255 is outside 0..254"),
        ({"map": {"0": 3, "1": 3}}, "pixel value 3 is mapped to both class 0 and class 1"),
    ],
)
def test_malformed_label_maps_are_client_errors(data, fragment):
    with pytest.raises(ClientError) as err:
        parse_label_map(data, "train_label_map.json")
    assert fragment in str(err.value) and "train_label_map.json" in str(err.value)


def test_files_are_read_per_split_and_bad_json_is_named(tmp_path):
    (tmp_path / "train_label_map.json").write_text(json.dumps({"scale": 2}))
    assert list(load_label_map(tmp_path, "train").apply(np.array([4], np.uint8))) == [2]
    assert load_label_map(tmp_path, "validation").is_identity
    (tmp_path / "validation_label_map.json").write_text("{scale: 2")
    with pytest.raises(ClientError, match="validation_label_map.json is not valid JSON"):
        load_label_map(tmp_path, "validation")


def test_identity_flag():
    assert LabelMap.identity().is_identity
    assert not parse_label_map({"scale": 2}, "f").is_identity
