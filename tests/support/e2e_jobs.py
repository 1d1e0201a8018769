"""Real training jobs for end-to-end tests: a generated dataset, an /opt/ml tree, the `train` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(Path(sys.executable).parent / "train")

# Small enough for 2 CPU cores, large enough to run the real ResNet and heads.
TINY = {
    "num_classes": 4,
    "num_training_samples": 8,
    "use_pretrained_model": "False",
    "crop_size": 64,
    "base_size": 72,
    "epochs": 2,
    "mini_batch_size": 4,
    "validation_mini_batch_size": 2,
    "learning_rate": 0.01,
    # The INT8 step (export, calibration, checks: ~30 s a job here) runs in the jobs of tests/e2e/test_int8_model.py
    # and the training image's test; every other job would only pay for it.
    "int8_model": "False",
}


def make_dataset_once(cache: Path, classes: int = 4, train: int = 8, validation: int = 4, size: int = 64) -> Path:
    from gluonseg.data.synthetic import make_dataset

    if not (cache / "train").exists():
        make_dataset(cache, classes=classes, train=train, validation=validation, size=size, seed=0)
    return cache


def job_tree(
    base: Path,
    dataset: Path,
    hyperparameters: dict,
    channels=("train", "train_annotation", "validation", "validation_annotation"),
) -> Path:
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    data = base / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in channels:
        if not (data / name).exists():
            shutil.copytree(dataset / name, data / name)
    return base


def train_env(base: Path, seed: int = 1, **extra: str) -> dict:
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "GLUONSEG_SEED": str(seed), "OMP_NUM_THREADS": "2", **extra}


def run_train(base: Path, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TRAIN], env=train_env(base, **extra), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
