"""Training under faults: SIGKILL at random points, unwritable folders, data that disappears."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from gluonseg.training.checkpoint import best_params, find_checkpoint
from tests.support.e2e_jobs import REPO, TINY, TRAIN, job_tree, run_train, train_env


def start(base) -> subprocess.Popen:
    return subprocess.Popen(
        [TRAIN],
        env=train_env(base),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )


@pytest.mark.timeout(900)
def test_sigkill_at_random_points_then_resume_finishes_the_requested_epochs(tmp_path, generated_dataset):
    hp = {**TINY, "epochs": 3}
    base = job_tree(tmp_path, generated_dataset, hp)
    rng = random.Random(1234)
    done_before = 0
    for _attempt in range(3):
        proc = start(base)
        time.sleep(rng.uniform(4, 14))
        os.killpg(proc.pid, signal.SIGKILL)  # the whole container dies: trainer and loader workers
        out, _ = proc.communicate(timeout=60)
        pointer = base / "checkpoints" / "latest.json"
        if pointer.exists():
            done = json.loads(pointer.read_text())["epoch"] + 1
            assert done >= done_before
            done_before = done
    final = run_train(base, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:]
    history = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2]
    if done_before:
        assert f"{done_before} epoch(s) done" in final.stdout
    epochs_run_last = [int(e) for e in re.findall(r"host=algo-1, epoch=(\d+), train loss", final.stdout)]
    assert epochs_run_last == list(range(done_before, 3))
    assert not list((base / "checkpoints").glob(".tmp-*"))


def test_checkpoint_folder_that_cannot_be_created_is_an_algorithm_error(tmp_path, generated_dataset):
    base = job_tree(tmp_path, generated_dataset, {**TINY, "epochs": 1})
    (base / "checkpoints").write_text("a file where the folder should be")
    proc = run_train(base, timeout=300)
    assert proc.returncode == 1
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("AlgorithmError: Cannot create the checkpoint folder")
    assert str(base / "checkpoints") in failure


def test_model_folder_that_cannot_be_written_keeps_the_trained_parameters(tmp_path, generated_dataset):
    base = job_tree(tmp_path, generated_dataset, {**TINY, "epochs": 1})
    (base / "model").write_text("a file where the model folder should be")
    proc = run_train(base, timeout=300)
    assert proc.returncode == 1
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith(f"AlgorithmError: Cannot write the model folder {base / 'model'}")
    assert best_params(find_checkpoint(base / "checkpoints")) is not None
    # Fix the cause and rerun: the finished checkpoint is found, nothing is trained again.
    (base / "model").unlink()
    (base / "output" / "failure").unlink()
    rerun = run_train(base, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "training already finished" in rerun.stdout
    assert "train loss" not in rerun.stdout.split("training already finished")[1]
    assert (base / "model" / "model_best.params").exists()


@pytest.mark.timeout(600)
def test_a_training_file_that_disappears_mid_job_is_a_client_error_not_a_hang(tmp_path, generated_dataset):
    base = job_tree(tmp_path, generated_dataset, {**TINY, "epochs": 3})
    proc = start(base)
    victim = sorted((base / "input" / "data" / "train").glob("*.jpg"))[0]
    deadline = time.monotonic() + 300
    while not (base / "checkpoints" / "latest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    victim.unlink()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ClientError:") and victim.name in failure and "not found" in failure
