"""The `train` entry point on malformed jobs: fails fast, exit non-zero, reason in output/failure."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.support.helpers import make_job, write_mask

REPO = Path(__file__).resolve().parents[2]
GOOD = {"num_classes": 3, "num_training_samples": 3, "use_pretrained_model": "False", "crop_size": 32}


def run_train(base: Path, command=None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    command = command or [str(Path(sys.executable).parent / "train")]
    start = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    return proc, time.monotonic() - start


def failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


def test_bad_hyperparameters_fail_fast_with_client_error(tmp_path):
    base = make_job(tmp_path, {**GOOD, "optimizer": "adadelta", "mini_batch_siz": 2})
    proc, seconds = run_train(base)
    assert proc.returncode == 2
    text = failure(base)
    assert text.startswith("ClientError: ")
    assert "The value 'adadelta' is not valid for the 'optimizer' hyperparameter" in text
    assert "('mini_batch_siz' was unexpected)" in text
    assert "Traceback" not in text and "Traceback" not in proc.stderr
    assert seconds < 30
    assert not (base / "model").exists() or not any((base / "model").iterdir())


def test_bad_mask_values_fail_before_any_model_is_built(tmp_path):
    base = make_job(tmp_path, GOOD)
    bad = np.zeros((30, 40), np.uint8)
    bad[3, 3] = 17
    write_mask(base / "input" / "data" / "validation_annotation" / "img_1.png", bad)
    proc, seconds = run_train(base)
    assert proc.returncode == 2, proc.stderr
    text = failure(base)
    assert text.startswith("ClientError: 1 mask(s) in 'validation_annotation' hold values outside 0..2")
    assert "values 17 in validation_annotation/img_1.png." in text
    assert "building" not in proc.stdout.lower()
    assert seconds < 30


def test_unusable_images_are_client_errors_named_under_their_channel_before_any_model(tmp_path):
    """A header bomb in train/ used to end the job with `AlgorithmError: DecompressionBombError` (exit 1)."""
    base = make_job(tmp_path, GOOD)
    data = base / "input" / "data"
    bomb = bytearray((data / "train" / "img_0.jpg").read_bytes())
    sof = bomb.index(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2  # the header claims 60000x60000 pixels
    (data / "train" / "img_0.jpg").write_bytes(bytes(bomb))
    (data / "validation" / "img_1.jpg").write_bytes(b"not an image at all")
    proc, seconds = run_train(base)
    assert proc.returncode == 2, proc.stderr
    text = failure(base)
    assert text.startswith("ClientError: 1 image(s) in 'train' cannot be used: train/img_0.jpg: the image is too large")
    assert "1 image(s) in 'validation' cannot be used: validation/img_1.jpg: not a readable JPEG or PNG image" in text
    assert "DecompressionBomb" not in text and "annotation" not in text
    assert "building" not in proc.stdout.lower()
    assert seconds < 30


def test_malformed_config_json_and_missing_channel(tmp_path):
    base = make_job(tmp_path / "a", GOOD)
    (base / "input" / "config" / "hyperparameters.json").write_text('{"num_classes": ')
    proc, _ = run_train(base)
    assert proc.returncode == 2
    assert failure(base).startswith("ClientError: hyperparameters file") and "is not valid JSON" in failure(base)

    base = make_job(tmp_path / "b", GOOD)
    os.rename(base / "input" / "data" / "validation_annotation", base / "input" / "data" / "val_ann")
    proc, _ = run_train(base)
    assert proc.returncode == 2
    assert "Missing required channel(s): 'validation_annotation'" in failure(base)


def test_train_py_does_what_train_does(tmp_path):
    base = make_job(tmp_path, {**GOOD, "num_classes": 1})
    proc, _ = run_train(base, [sys.executable, str(REPO / "train.py")])
    assert proc.returncode == 2
    assert "The value '1' is not valid for the 'num_classes' hyperparameter" in failure(base)


def test_failure_text_fits_the_1024_character_reason(tmp_path):
    base = make_job(tmp_path, GOOD, n_train=40)
    for i in range(40):
        write_mask(base / "input" / "data" / "train_annotation" / f"img_{i}.png", np.full((30, 40), 99, np.uint8))
    proc, _ = run_train(base)
    text = failure(base)
    assert proc.returncode == 2
    head = text[:1024]
    assert "40 mask(s) in 'train_annotation' hold values outside 0..2" in head and "values 99" in head
    assert "(and 20 more)" in text
    json.dumps(text)  # plain text, serialisable as SageMaker's FailureReason
