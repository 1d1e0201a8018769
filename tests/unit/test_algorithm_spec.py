"""`gluonseg algorithm-spec`: the CreateAlgorithm body, checked offline against botocore's own model of the API."""

from __future__ import annotations

import copy
import json
import re

import botocore.session
import pytest
from botocore.validate import ParamValidator

from gluonseg.algorithm_spec import SAGEMAKER_HYPERPARAMETERS, algorithm_spec
from gluonseg.cli import main
from gluonseg.hyperparameters import BY_NAME, SCHEMA
from gluonseg.training.metrics_log import load_metric_definitions

TRAIN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gluonseg-train:1.0"
SERVE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gluonseg-serve:1.0"


@pytest.fixture(scope="module")
def create_algorithm_input():
    """The input shape of SageMaker's CreateAlgorithm, from the service model botocore ships (no AWS call)."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    return model.operation_model("CreateAlgorithm").input_shape


def problems(body: dict, shape) -> list[str]:
    """What SageMaker would refuse in `body`: botocore's ParamValidator (names, required members, types,
    minimum lengths) plus what it leaves to the service: enums, maximum lengths and patterns."""
    report = ParamValidator().validate(body, shape)
    found = [report.generate_report()] if report.has_errors() else []

    def walk(value, shape, where):
        if shape.type_name == "structure" and isinstance(value, dict):
            for key, item in value.items():
                if key in shape.members:
                    walk(item, shape.members[key], f"{where}.{key}")
        elif shape.type_name == "list" and isinstance(value, list):
            if "max" in shape.metadata and len(value) > shape.metadata["max"]:
                found.append(f"{where}: more than {shape.metadata['max']} items")
            for i, item in enumerate(value):
                walk(item, shape.member, f"{where}[{i}]")
        elif shape.type_name == "string" and isinstance(value, str):
            if shape.enum and value not in shape.enum:
                found.append(f"{where}: {value!r} is not one of the enum {shape.name}")
            if "max" in shape.metadata and len(value) > shape.metadata["max"]:
                found.append(f"{where}: longer than {shape.metadata['max']}")
            pattern = shape.metadata.get("pattern")
            if pattern and "\\p{" not in pattern and not re.fullmatch(pattern, value):
                found.append(f"{where}: {value!r} does not match {pattern}")

    walk(body, shape, "")
    return found


def test_the_body_is_a_valid_create_algorithm_request(create_algorithm_input):
    body = algorithm_spec(TRAIN_IMAGE, SERVE_IMAGE)
    assert problems(body, create_algorithm_input) == []
    json.dumps(body)  # what --cli-input-json reads


@pytest.mark.parametrize(
    "path,value,expected",
    [
        (("TrainingSpecification", "SupportedHyperParameters", 0, "Typ"), "Categorical", "Unknown parameter"),
        (("TrainingSpecification", "SupportsDistributedTraining"), "true", "Invalid type"),
        (("TrainingSpecification", "SupportedHyperParameters", 0, "Type"), "Categorial", "is not one of the enum"),
        (("TrainingSpecification", "SupportedTrainingInstanceTypes", 0), "ml.p3.3xlarge", "is not one of the enum"),
        (("TrainingSpecification", "TrainingChannels", 0, "SupportedInputModes", 0), "Stream", "not one of the enum"),
        (("TrainingSpecification", "SupportedTuningJobObjectiveMetrics", 0, "Type"), "Maximise", "not one of"),
        (("AlgorithmName",), "gluonseg_semantic", "does not match"),
        (("TrainingSpecification", "TrainingImage"), None, "Missing required parameter"),
    ],
)
def test_a_wrong_field_name_type_or_enum_fails_validation(create_algorithm_input, path, value, expected):
    body = copy.deepcopy(algorithm_spec(TRAIN_IMAGE, SERVE_IMAGE))
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    elif isinstance(path[-1], str) and path[-1] not in target:  # a misspelt field name
        target[path[-1]] = target.pop(path[-1] + "e")
    else:
        target[path[-1]] = value
    assert any(expected in p for p in problems(body, create_algorithm_input)), problems(body, create_algorithm_input)


def test_all_24_hyperparameters_carry_the_schemas_types_defaults_and_ranges():
    specs = algorithm_spec(TRAIN_IMAGE, SERVE_IMAGE)["TrainingSpecification"]["SupportedHyperParameters"]
    assert [s["Name"] for s in specs] == list(SAGEMAKER_HYPERPARAMETERS)
    assert len(specs) == 24 and set(SAGEMAKER_HYPERPARAMETERS) <= {p.name for p in SCHEMA}
    for spec in specs:
        param = BY_NAME[spec["Name"]]
        assert spec["IsRequired"] is param.required
        assert param.accepts() in spec["Description"]
        if param.default is None:
            assert "DefaultValue" not in spec
        else:  # the value as a job would pass it, parsed back by the container's own schema
            assert spec["DefaultValue"] == str(param.default) or float(spec["DefaultValue"]) == param.default
        kind = {"int": "Integer", "float": "Continuous", "choice": "Categorical", "bool": "Categorical"}
        assert spec["Type"] == kind.get(param.kind, "FreeText")
        ranges = spec.get("Range", {})
        if param.kind in ("choice", "bool"):
            assert ranges == {"CategoricalParameterRangeSpecification": {"Values": list(param.choices)}}
        elif param.low is not None and param.high is not None:
            [(key, bounds)] = ranges.items()
            assert key == f"{spec['Type']}ParameterRangeSpecification"
            assert (float(bounds["MinValue"]), float(bounds["MaxValue"])) == (param.low, param.high)
        else:  # one-sided (a positive integer) or free text: no range SageMaker could express
            assert ranges == {}
    by_name = {s["Name"]: s for s in specs}
    assert by_name["num_classes"]["Range"] == {
        "IntegerParameterRangeSpecification": {"MinValue": "2", "MaxValue": "254"}
    }
    assert (
        by_name["weight_decay"]["DefaultValue"] == "0.0001"
        and by_name["use_pretrained_model"]["DefaultValue"] == "True"
    )
    assert {s["Name"] for s in specs if s["IsTunable"]} == {
        "learning_rate",
        "mini_batch_size",
        "momentum",
        "weight_decay",
        "optimizer",
    }


def test_schema_entries_outside_the_sagemaker_set_are_not_published(monkeypatch):
    import dataclasses

    import gluonseg.algorithm_spec as spec_module

    extension = dataclasses.replace(BY_NAME["epochs"], name="class_weights_extension")
    monkeypatch.setattr(spec_module, "SCHEMA", (*SCHEMA, extension))
    names = [
        s["Name"] for s in algorithm_spec(TRAIN_IMAGE, SERVE_IMAGE)["TrainingSpecification"]["SupportedHyperParameters"]
    ]
    assert names == list(SAGEMAKER_HYPERPARAMETERS)


def test_metrics_channels_and_inference(create_algorithm_input):
    body = algorithm_spec(TRAIN_IMAGE, SERVE_IMAGE, name="my-segmenter")
    training, inference = body["TrainingSpecification"], body["InferenceSpecification"]
    assert body["AlgorithmName"] == "my-segmenter" and training["TrainingImage"] == TRAIN_IMAGE
    assert training["MetricDefinitions"] == load_metric_definitions()
    assert training["SupportedTuningJobObjectiveMetrics"] == [
        {"Type": "Maximize", "MetricName": "validation:mIOU"},
        {"Type": "Maximize", "MetricName": "validation:pixel_accuracy"},
    ]
    names = {m["MetricName"] for m in training["SupportedTuningJobObjectiveMetrics"]}
    assert names <= {d["Name"] for d in training["MetricDefinitions"]}
    channels = {c["Name"]: c for c in training["TrainingChannels"]}
    assert list(channels) == ["train", "validation", "train_annotation", "validation_annotation", "label_map", "model"]
    assert channels["train"]["IsRequired"] and channels["train"]["SupportedInputModes"] == ["File", "Pipe"]
    assert "image/jpeg" in channels["train"]["SupportedContentTypes"]
    assert channels["train_annotation"]["SupportedContentTypes"] == ["image/png"]
    assert not channels["model"]["IsRequired"] and training["SupportsDistributedTraining"] is True
    assert inference["Containers"] == [{"Image": SERVE_IMAGE}]
    assert inference["SupportedContentTypes"] == ["image/jpeg", "image/png", "application/x-image"]
    assert "application/x-recordio-protobuf" in inference["SupportedResponseMIMETypes"]


def test_the_command_prints_the_body(capsys):
    assert main(["algorithm-spec", "--training-image", TRAIN_IMAGE, "--inference-image", SERVE_IMAGE]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == algorithm_spec(TRAIN_IMAGE, SERVE_IMAGE)
