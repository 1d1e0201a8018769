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
        ({"map": {"0": 300}}, "key '0' of 'map' has pixel value 300, outside the pixel values 0..255"),
        ({"map": {"255": 3}}, "key '255' of 'map' is class id 255, outside the classes 0..254"),
        ({"map": {"0": 3, "1": 3}}, "keys '0' and '1' of 'map' both have pixel value 3; a pixel value can become"),
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


def test_a_class_id_outside_num_classes_is_the_maps_mistake_named_when_the_map_is_read(tmp_path):
    """{"map": {"40": 1}} with num_classes=21 used to fail on the mask scan, blaming the masks for value 1."""
    channel = tmp_path / "label_map"
    channel.mkdir()
    (channel / "train_label_map.json").write_text(json.dumps({"map": {"0": 0, "40": 1}}))
    with pytest.raises(ClientError) as err:
        load_label_map(channel, "train", num_classes=21)
    assert str(err.value) == (
        "label_map/train_label_map.json: key '40' of 'map' is class id 40, outside the classes 0..20 "
        "(num_classes=21); a key of 'map' is the class id used for training, its value the pixel value in the masks"
    )
    assert load_label_map(channel, "train", num_classes=41).apply(np.array([1], np.uint8))[0] == 40
    (channel / "validation_label_map.json").write_text(json.dumps({"map": {"0": 0, "1": 0}}))
    with pytest.raises(ClientError, match=r"^label_map/validation_label_map.json: keys '0' and '1' of 'map' both"):
        load_label_map(channel, "validation", num_classes=21)
    (channel / "validation_label_map.json").write_text("{")
    with pytest.raises(ClientError, match=r"^label map label_map/validation_label_map.json is not valid JSON"):
        load_label_map(channel, "validation", num_classes=21)


def test_a_job_with_a_map_outside_num_classes_fails_before_the_scan_naming_the_file(tmp_path):
    from gluonseg.data.inputs import resolve_inputs
    from gluonseg.environment import Environment
    from gluonseg.hyperparameters import parse
    from tests.support.helpers import make_job

    base = make_job(tmp_path, {"num_classes": 21, "num_training_samples": 3})
    (base / "input" / "data" / "label_map").mkdir()
    (base / "input" / "data" / "label_map" / "train_label_map.json").write_text('{"map": {"40": 1}}')
    hp = parse({"num_classes": "21", "num_training_samples": "3"})
    with pytest.raises(ClientError) as err:
        resolve_inputs(Environment(base), hp)
    assert str(err.value).startswith("label_map/train_label_map.json: key '40' of 'map' is class id 40, outside")
    assert "mask(s)" not in str(err.value)
