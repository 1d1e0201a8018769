"""Class weights and OHEM in real jobs: the same weights on every host, class_stats.json, and a job without
the extension keys that is the built-in's."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from gluonseg.data.channels import pair_channel, scan_masks
from gluonseg.data.label_map import LabelMap
from gluonseg.evaluate import evaluate_folder
from gluonseg.hyperparameters import SCHEMA
from gluonseg.training.class_weights import median_frequency
from tests.e2e.test_distributed import HOSTS2, host_logs, launch, stop_group
from tests.support.e2e_jobs import TINY, job_tree, run_train

WEIGHTS_LINE = re.compile(r"class weights \(median_frequency\): \[([^\]]*)\]; loss: ohem")


def weights_of(dataset, names: list[str] | None = None) -> np.ndarray:
    samples = pair_channel(dataset / "train", dataset / "train_annotation")
    if names is not None:
        samples = [s for s in samples if s.name in names]
    counts = scan_masks(samples, LabelMap.identity(), TINY["num_classes"], "train_annotation", workers=1)
    return median_frequency(counts.class_counts(TINY["num_classes"]))


@pytest.mark.timeout(300)
def test_two_sharded_hosts_log_the_same_weights_from_the_global_counts(tmp_path, generated_dataset):
    model = tmp_path / "model"
    log = tmp_path / "launcher.log"
    hp = {**TINY, "epochs": 1, "class_weights": "median_frequency", "loss": "ohem"}
    proc = launch(generated_dataset, model, hp, log, "--distribution", "ShardedByS3Key")
    try:
        code = proc.wait(timeout=240)
    finally:
        stop_group(proc)
    assert code == 0, log.read_text()[-3000:]
    logs = host_logs(model)
    logged = {h: WEIGHTS_LINE.findall(logs[h]) for h in HOSTS2}
    assert len(logged["algo-1"]) == 1 and logged["algo-1"] == logged["algo-2"]
    weights = [float(v) for v in logged["algo-1"][0].split(",")]
    expected = weights_of(generated_dataset)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    # Each host holds half the images (S3 sharding: algo-2 the 2nd, 4th, ...), whose own counts differ.
    names = sorted(p.stem for p in (generated_dataset / "train").iterdir())
    assert not np.allclose(weights_of(generated_dataset, names[1::2]), expected, rtol=1e-3)
    stats = json.loads((model / "class_stats.json").read_text())
    np.testing.assert_allclose(stats["weights"], expected, rtol=1e-9)
    assert stats["loss"] == "ohem" and stats["class_weights"] == "median_frequency" and stats["weight_cap"] == 10
    written = json.loads((model / "hyperparams.json").read_text())
    assert written["class_weights"] == "median_frequency" and written["loss"] == "ohem"


def test_a_job_without_the_keys_writes_the_built_ins_hyperparameters_and_its_class_stats(
    trained_model_dir, generated_dataset
):
    written = json.loads((trained_model_dir / "hyperparams.json").read_text())
    # TINY sets one extension (int8_model=False, for the suite's time): it is written, the unset ones are not
    assert {k for k in written if k != "_gluonseg"} == {p.name for p in SCHEMA if not p.extension} | {"int8_model"}
    assert written["int8_model"] is False and TINY["int8_model"] == "False"
    stats = json.loads((trained_model_dir / "class_stats.json").read_text())
    assert stats["class_weights"] == "none" and stats["weights"] is None and stats["loss"] == "cross_entropy"
    samples = pair_channel(generated_dataset / "train", generated_dataset / "train_annotation")
    pixels = scan_masks(samples, LabelMap.identity(), 4, "train_annotation", workers=1).class_pixels[:4]
    assert stats["pixels"] == pixels.tolist()
    np.testing.assert_allclose(stats["pixel_share"], pixels / pixels.sum())


def test_evaluate_reports_the_training_share_next_to_the_iou(trained_model_dir, generated_dataset):
    report = evaluate_folder(
        trained_model_dir, generated_dataset / "validation", generated_dataset / "validation_annotation", progress=False
    )
    stats = json.loads((trained_model_dir / "class_stats.json").read_text())
    assert list(report["training_pixel_share_per_class"].values()) == stats["pixel_share"]
    shares = list(report["pixel_share_per_class"].values())
    assert sum(shares) == pytest.approx(1.0) and len(shares) == 4
    assert report["class_weights_per_class"] is None


@pytest.mark.timeout(300)
def test_explicit_defaults_train_bit_for_bit_the_same_parameters_as_no_keys(tmp_path, generated_dataset):
    # One OpenMP thread: then a seeded CPU job is bit-for-bit repeatable (with more, reductions may reorder).
    digests = []
    for name, extra in (("absent", {}), ("explicit", {"class_weights": "none", "loss": "cross_entropy"})):
        base = job_tree(tmp_path / name, generated_dataset, {**TINY, "epochs": 1, **extra})
        proc = run_train(base, OMP_NUM_THREADS="1")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        digests.append(hashlib.sha256((base / "model" / "model_algo-1").read_bytes()).hexdigest())
        assert "class weights (none): none; loss: cross_entropy" in proc.stdout + proc.stderr
    assert digests[0] == digests[1]
