"""End-to-end training jobs through the real `train` command on a generated dataset (CPU, small crops)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo import FCN, DeepLabV3, PSPNet

from gluonseg.artifacts import read_model_dir
from gluonseg.training.checkpoint import best_params, find_checkpoint
from gluonseg.training.metrics_log import load_metric_definitions
from tests.support.e2e_jobs import TINY, TRAIN, job_tree, run_train, train_env

GLUONCV_CLASSES = {"fcn": FCN, "psp": PSPNet, "deeplab": DeepLabV3}


@pytest.fixture(scope="module")
def dataset(generated_dataset):
    return generated_dataset


def check_job(base, proc, hp):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (base / "output" / "failure").exists()
    model = base / "model"
    for name in ("hyperparams.json", "model_algo-1", "model_best.params", "model-symbol.json", "model-0000.params"):
        assert (model / name).stat().st_size > 0, name
    meta = json.loads((model / "hyperparams.json").read_text())
    assert meta["num_classes"] == hp["num_classes"] and meta["algorithm"] == hp.get("algorithm", "fcn")
    assert meta["_gluonseg"]["crop_size"] == hp["crop_size"]
    history = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == list(range(int(hp["epochs"])))
    assert (base / "output" / "data" / "training_curves.png").stat().st_size > 1000
    # Parameter files are hard links where one file serves several names (100s of MB each otherwise).
    ckpt = find_checkpoint(base / "checkpoints")
    best_epoch = meta["_gluonseg"]["best_epoch"]
    assert max(history, key=lambda r: r["mIOU"])["mIOU"] == pytest.approx(history[best_epoch]["mIOU"])
    assert os.path.samefile(model / "model_algo-1", ckpt / "net.params")
    assert os.path.samefile(model / "model_best.params", best_params(ckpt))
    assert os.path.samefile(model / "model_best.params", model / "model_algo-1") == (best_epoch == len(history) - 1)
    return history


def load_into_gluoncv(model_dir, algorithm, backbone, crop):
    """What SageMaker users do with the built-in's artifacts: GluonCV's own class + load_parameters."""
    cls = GLUONCV_CLASSES[algorithm]
    net = cls(4, backbone=backbone, crop_size=crop, pretrained_base=False)
    net.load_parameters(str(model_dir / "model_best.params"))
    return net


@pytest.mark.parametrize("algorithm", ["fcn", "psp", "deeplab"])
def test_train_each_algorithm_end_to_end(tmp_path, dataset, algorithm):
    hp = {**TINY, "algorithm": algorithm}
    base = job_tree(tmp_path, dataset, hp)
    proc = run_train(base)
    history = check_job(base, proc, hp)
    log = proc.stdout + proc.stderr

    # The shipped metric definitions pull the logged numbers out of the real log.
    for definition in load_metric_definitions():
        values = [float(v) for v in re.findall(definition["Regex"], log)]
        assert len(values) >= 2, definition["Name"]
    mious = [float(v) for v in re.findall(r"validation mIOU <score>=([-+0-9.eE]+)", log)]
    assert mious[:2] == pytest.approx([r["mIOU"] for r in history], rel=1e-4)
    losses = [float(v) for v in re.findall(r"train loss <loss>=([-+0-9.eE]+)", log)]
    assert losses == pytest.approx([r["train_loss"] for r in history], rel=1e-4)
    assert "host=algo-1, epoch=0" in log
    # The summary names the best epoch, and is the last value the mIOU regex reads: the saved model's.
    best = max(range(len(history)), key=lambda i: history[i]["mIOU"])
    assert re.search(rf"host=algo-1, best epoch={best}, validation mIOU <score>=", log)
    assert mious[-1] == pytest.approx(history[best]["mIOU"], rel=1e-4)

    # Artifacts load into GluonCV's own classes and the exported graph matches the Gluon network.
    model_dir = base / "model"
    net = load_into_gluoncv(model_dir, algorithm, "resnet50", 64)
    x = mx.nd.array(np.random.default_rng(0).normal(size=(1, 3, 64, 64)))
    expected = net(x)[0].asnumpy()
    sym = mx.gluon.SymbolBlock.imports(
        str(model_dir / "model-symbol.json"), ["data"], str(model_dir / "model-0000.params")
    )
    got = sym(x)
    got = (got[0] if isinstance(got, (list, tuple)) else got).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert read_model_dir(model_dir).hp.algorithm == algorithm


def test_train_resnet101_and_whole_image_validation(tmp_path, dataset):
    hp = {**TINY, "backbone": "resnet-101", "algorithm": "psp", "epochs": 1, "validation_mini_batch_size": 1}
    base = job_tree(tmp_path, dataset, hp)
    proc = run_train(base)
    history = check_job(base, proc, hp)
    assert 0.0 <= history[0]["mIOU"] <= 1.0
    load_into_gluoncv(base / "model", "psp", "resnet101", 64)


def test_sigterm_checkpoint_and_resume_run_exactly_the_requested_epochs(tmp_path, dataset):
    hp = {**TINY, "epochs": 4}
    base = job_tree(tmp_path, dataset, hp)
    proc = subprocess.Popen([TRAIN], env=train_env(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pointer = base / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not pointer.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pointer.exists(), "no checkpoint appeared"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    assert "SIGTERM received" in out
    assert not (base / "output" / "failure").exists()
    saved = json.loads((base / "checkpoints" / "latest.json").read_text())
    done = saved["epoch"] + 1
    assert 1 <= done < 4

    resumed = run_train(base)
    history = check_job(base, resumed, hp)
    assert f"{done} epoch(s) done" in resumed.stdout
    epochs_in_second_run = re.findall(r"host=algo-1, epoch=(\d+), train loss", resumed.stdout)
    assert [int(e) for e in epochs_in_second_run] == list(range(done, 4))
    assert len(history) == 4


def test_incremental_training_from_a_model_tarball_and_mismatch(tmp_path, dataset):
    import tarfile

    first = job_tree(tmp_path / "first", dataset, {**TINY, "epochs": 1})
    check_job(first, run_train(first), {**TINY, "epochs": 1})
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for f in (first / "model").iterdir():
            tar.add(f, arcname=f.name)

    second = job_tree(tmp_path / "second", dataset, {**TINY, "epochs": 1})
    (second / "input" / "data" / "model").mkdir()
    (second / "input" / "data" / "model" / "model.tar.gz").write_bytes(tarball.read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run_train(second, TMPDIR=str(scratch))
    check_job(second, proc, {**TINY, "epochs": 1})
    assert "incremental training from" in proc.stdout
    # The archive's extracted copy is gone once the weights are loaded (multiprocessing leaves its pymp-*).
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("pymp-")] == []

    third = job_tree(tmp_path / "third", dataset, {**TINY, "epochs": 1, "crop_size": 72})
    (third / "input" / "data" / "model").mkdir()
    (third / "input" / "data" / "model" / "model.tar.gz").write_bytes(tarball.read_bytes())
    proc = run_train(third)
    assert proc.returncode == 2
    text = (third / "output" / "failure").read_text()
    assert text.startswith("ClientError: The model channel's model does not match this job")
    assert "crop_size is 64 in the model but 72 in this job" in text
