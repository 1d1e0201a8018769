import json

import pytest

from gluonseg.environment import Environment
from gluonseg.errors import AlgorithmError, ClientError, run_reporting_failures


def test_base_dir_from_sagemaker_base_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    env = Environment()
    assert env.hyperparameters_path == tmp_path / "input/config/hyperparameters.json"
    assert env.channel_dir("train") == tmp_path / "input/data/train"
    assert env.pipe_path("train", 3) == tmp_path / "input/data/train_3"
    assert env.model_dir == tmp_path / "model" and env.output_data_dir == tmp_path / "output/data"
    assert env.failure_path == tmp_path / "output/failure" and env.checkpoint_dir == tmp_path / "checkpoints"
    monkeypatch.delenv("SAGEMAKER_BASE_DIR")
    assert Environment().model_dir.as_posix() == "/opt/ml/model"


def test_missing_config_files_mean_local_single_host(tmp_path):
    env = Environment(tmp_path)
    assert env.raw_hyperparameters() == {}
    res = env.resources()
    assert res.current_host == "algo-1" and res.hosts == ("algo-1",) and not res.is_multi_host
    (tmp_path / "input/data/train").mkdir(parents=True)
    assert env.channels()["train"].input_mode == "File"


def test_config_files_are_read(tmp_path):
    env = Environment(tmp_path)
    env.config_dir.mkdir(parents=True)
    env.resource_config_path.write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth1"})
    )
    env.input_data_config_path.write_text(
        json.dumps(
            {
                "train": {
                    "TrainingInputMode": "Pipe",
                    "S3DistributionType": "ShardedByS3Key",
                    "RecordWrapperType": "RecordIO",
                    "ContentType": "application/x-recordio",
                },
                "validation": {"TrainingInputMode": "File"},
            }
        )
    )
    res = env.resources()
    assert res.current_host == "algo-2" and res.hosts == ("algo-1", "algo-2") and res.is_multi_host
    assert res.network_interface_name == "eth1"
    ch = env.channels()
    assert ch["train"].is_pipe and ch["train"].distribution == "ShardedByS3Key"
    assert not ch["validation"].is_pipe and ch["validation"].content_type is None


def test_bad_config_files_are_client_errors(tmp_path):
    env = Environment(tmp_path)
    env.config_dir.mkdir(parents=True)
    env.hyperparameters_path.write_text("[1, 2]")
    with pytest.raises(ClientError, match="must hold a JSON object"):
        env.raw_hyperparameters()
    env.resource_config_path.write_text(json.dumps({"current_host": "algo-9", "hosts": ["algo-1"]}))
    with pytest.raises(ClientError, match="current_host 'algo-9' is not in hosts"):
        env.resources()
    env.hyperparameters_path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ClientError, match="nested too deeply|not valid JSON"):
        env.raw_hyperparameters()


def test_failures_are_reported_with_prefix_and_exit_code(tmp_path, capsys):
    path = tmp_path / "output" / "failure"

    def client():
        raise ClientError("bad data in x.png")

    def ours():
        raise AlgorithmError("disk full")

    def crash():
        raise ZeroDivisionError("division by zero")

    assert run_reporting_failures(client, lambda: path) == 2
    assert path.read_text() == "ClientError: bad data in x.png"
    assert run_reporting_failures(ours, lambda: path) == 1
    assert path.read_text() == "AlgorithmError: disk full"
    assert run_reporting_failures(crash, lambda: path) == 1
    assert path.read_text() == "AlgorithmError: ZeroDivisionError: division by zero"
    assert run_reporting_failures(lambda: None, lambda: path) == 0


def test_a_job_that_cannot_write_its_outputs_fails_before_any_work_naming_the_folders(tmp_path):
    import subprocess

    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    env = Environment(base)
    env.check_outputs_writable()  # creates output/ and checkpoints/, as SageMaker lays them
    assert (base / "output").is_dir() and (base / "checkpoints").is_dir()
    # Read-only for root too (what the serving image's uid 1000 meets under a root-owned /opt/ml).
    subprocess.run(["chattr", "+i", str(base / "checkpoints"), str(base / "model")], check=True)
    try:
        with pytest.raises(ClientError) as info:
            env.check_outputs_writable()
    finally:
        subprocess.run(["chattr", "-i", str(base / "checkpoints"), str(base / "model")], check=True)
    text = str(info.value)
    assert f"{base / 'model'} (not writable)" in text and f"{base / 'checkpoints'} (not writable)" in text
    assert str(base / "output") + " " not in text and "Run the training image" in text


def test_a_host_other_than_the_first_checks_and_makes_only_its_output_folder(tmp_path):
    env = Environment(tmp_path / "ml")
    env.check_outputs_writable(primary=False)  # the model and checkpoints are the first host's to write
    assert (tmp_path / "ml" / "output").is_dir()
    assert not (tmp_path / "ml" / "model").exists() and not (tmp_path / "ml" / "checkpoints").exists()
