"""The CPU training image run as SageMaker runs a training job: `docker run --network none -v BASE:/opt/ml IMAGE train`.

BASE is laid out as SageMaker lays it: folders created by root with mode 755, hyperparameters as strings.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from gluonseg.errors import CLIENT_ERROR_EXIT_CODE
from gluonseg.util import STOPPED_EXIT_CODE
from tests.support.containers import run_to_end
from tests.support.e2e_jobs import TINY, job_tree
from tests.support.weights import write_backbone_weights

METRIC = re.compile(r"#quality_metric: host=algo-1, epoch=(\d+), validation mIOU <score>=([0-9.]+)")


def sagemaker_tree(base: Path, dataset: Path, hyperparameters: dict) -> Path:
    base.mkdir(mode=0o755)
    job_tree(base, dataset, hyperparameters)
    for folder in (base, base / "input", base / "input" / "data", base / "input" / "config"):
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert folder.stat().st_uid == 0 and mode == 0o755, f"{folder}: uid {folder.stat().st_uid}, mode {mode:o}"
    return base


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory):
    """A folder like the one the GPU image bundles (GLUONSEG_PRETRAINED_DIR), with stand-in resnet50_v1s weights."""
    folder = tmp_path_factory.mktemp("pretrained")
    write_backbone_weights(folder / "resnet50_v1s.params")
    return folder


def test_the_training_image_trains_with_network_isolation_and_writes_the_artifact(
    containers, generated_dataset, backbone_weights, tmp_path
):
    hyperparameters = {**TINY, "use_pretrained_model": "True", "int8_model": "True"}  # the INT8 step too
    base = sagemaker_tree(tmp_path / "ml", generated_dataset, hyperparameters)
    job = containers(
        "train",
        "train",
        network="none",
        volumes={base: ("/opt/ml", "rw"), backbone_weights: ("/opt/gluonseg/pretrained", "ro")},
    )
    code, logs = run_to_end(job)
    assert code == 0, logs[-4000:]
    assert "pretrained weights for resnet50_v1s: /opt/gluonseg/pretrained/resnet50_v1s.params" in logs
    epochs = [int(epoch) for epoch, _ in METRIC.findall(logs)]
    assert epochs == [0, 1], logs[-4000:]
    model = base / "model"
    assert {"model_best.params", "hyperparams.json"} <= {p.name for p in model.iterdir()}
    assert list(model.glob("*-symbol.json")), sorted(p.name for p in model.iterdir())
    assert json.loads((model / "hyperparams.json").read_text())["num_classes"] == TINY["num_classes"]
    assert not (base / "output" / "failure").exists()
    # the INT8 step ran in the image, offline: check pictures kept, the INT8 model judged and recorded
    assert "INT8 step took" in logs and len(list((model / "check" / "images").glob("*.jpg"))) == 2, logs[-4000:]
    record = json.loads((model / "model-int8-onnx.json").read_text())
    assert record["kept"] == (model / "model-int8.onnx").exists() and record["attempts"]


def test_a_bad_hyperparameter_fails_the_job_with_a_client_error(containers, generated_dataset, tmp_path):
    base = sagemaker_tree(tmp_path / "ml", generated_dataset, {**TINY, "num_classes": "1"})
    code, logs = run_to_end(containers("train", "train", network="none", volumes={base: ("/opt/ml", "rw")}))
    assert code == CLIENT_ERROR_EXIT_CODE, logs[-3000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ClientError:") and "num_classes" in failure, failure
    assert "Traceback" not in logs


def test_training_in_the_serving_image_says_why_before_any_work(containers, generated_dataset, tmp_path):
    """The serving image runs as uid 1000: /opt/ml is root's. Before, it trained an epoch and then died at its
    first checkpoint with a PermissionError and no failure file."""
    base = sagemaker_tree(tmp_path / "ml", generated_dataset, TINY)
    code, logs = run_to_end(containers("serve", "train", network="none", volumes={base: ("/opt/ml", "rw")}))
    assert code == CLIENT_ERROR_EXIT_CODE, logs[-3000:]
    assert "ClientError: cannot write /opt/ml/model (Permission denied)" in logs
    assert "/opt/ml/checkpoints (Permission denied)" in logs and "as uid 1000" in logs
    assert "train loss" not in logs and "Traceback" not in logs


def test_docker_stop_mid_training_checkpoints_exits_143_and_the_next_run_resumes(
    containers, generated_dataset, tmp_path
):
    base = sagemaker_tree(tmp_path / "ml", generated_dataset, {**TINY, "epochs": 3})
    volumes = {base: ("/opt/ml", "rw")}
    job = containers("train", "train", network="none", volumes=volumes).start()
    job.wait_for_log(METRIC.pattern.replace(r"(\d+)", "0", 1), timeout=600)  # epoch 0 done, epoch 1 under way
    # StopTrainingJob: SIGTERM, then SIGKILL 120 s later.
    assert job.stop(grace_s=120) == STOPPED_EXIT_CODE, job.logs()[-4000:]
    logs = job.logs()
    assert "SIGTERM received" in logs
    assert list((base / "checkpoints").iterdir()), "no checkpoint after the stop"
    assert not (base / "output" / "failure").exists()  # a stop is not a failure

    code, again = run_to_end(containers("train", "train", network="none", volumes=volumes))
    assert code == 0, again[-4000:]
    assert re.search(r"resuming from checkpoint \S+: \d+ epoch\(s\) done", again), again[-3000:]
    assert [int(epoch) for epoch, _ in METRIC.findall(again)] == [1, 2]  # the finished epoch is not trained again
    assert (base / "model" / "model_best.params").exists()
