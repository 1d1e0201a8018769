"""Session-wide fixtures: one model trained by the real `train` command, shared by the serving tests."""

from __future__ import annotations

import shutil

import pytest

from tests.support.e2e_jobs import TINY, job_tree, make_dataset_once, run_train


@pytest.fixture(scope="session")
def generated_dataset(tmp_path_factory):
    return make_dataset_once(tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, generated_dataset):
    """An FCN-ResNet-50 model folder (4 classes, crop 64) made by `train` on the generated dataset."""
    base = job_tree(tmp_path_factory.mktemp("trained"), generated_dataset, {**TINY, "epochs": 1})
    proc = run_train(base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(base / "checkpoints", ignore_errors=True)  # 300 MB we do not need
    return base / "model"


@pytest.fixture(scope="session")
def trained_algorithm_dir(tmp_path_factory, generated_dataset, trained_model_dir):
    """`get(algorithm)`: a model folder like trained_model_dir's for 'fcn', 'psp' or 'deeplab', trained on first use."""
    made = {"fcn": trained_model_dir}

    def get(algorithm: str):
        if algorithm not in made:
            hp = {**TINY, "epochs": 1, "algorithm": algorithm}
            base = job_tree(tmp_path_factory.mktemp(f"trained-{algorithm}"), generated_dataset, hp)
            proc = run_train(base)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            shutil.rmtree(base / "checkpoints", ignore_errors=True)
            made[algorithm] = base / "model"
        return made[algorithm]

    return get
