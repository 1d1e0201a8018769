"""Pipe mode (augmented manifest) through real FIFOs, fed while the real `train` command reads them."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from gluonseg.recordio import encode_record
from tests.support.e2e_jobs import REPO, TINY, TRAIN, train_env


def pairs(dataset, split):
    images = sorted((dataset / split).glob("*.jpg"))
    return [(p.read_bytes(), (dataset / f"{split}_annotation" / (p.stem + ".png")).read_bytes()) for p in images]


def feed_fifo(path, records: list[bytes], cut_last: bool = False):
    """Create a FIFO and write the records once a reader opens it (like SageMaker's pipe agent)."""
    os.mkfifo(path)

    def writer():
        try:
            with open(path, "wb") as f:
                for i, rec in enumerate(records):
                    if cut_last and i == len(records) - 1:
                        f.write(rec[: len(rec) // 2])
                        break
                    f.write(rec)
        except BrokenPipeError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return t


def pipe_job(base, hp):
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hp.items()}))
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {
                name: {
                    "TrainingInputMode": "Pipe",
                    "RecordWrapperType": "RecordIO",
                    "ContentType": "application/x-recordio",
                    "S3DistributionType": "FullyReplicated",
                }
                for name in ("train", "validation")
            }
        )
    )
    (base / "input" / "data").mkdir(parents=True)
    return base


def records(pairs_):
    return [encode_record(payload) for pair in pairs_ for payload in pair]


@pytest.mark.timeout(600)
def test_pipe_mode_training_reads_one_stream_per_epoch(tmp_path, generated_dataset):
    hp = {**TINY, "epochs": 2}
    base = pipe_job(tmp_path, hp)
    data = base / "input" / "data"
    train_records = records(pairs(generated_dataset, "train"))
    val_records = records(pairs(generated_dataset, "validation"))
    threads = [feed_fifo(data / f"train_{e}", train_records) for e in range(2)]
    threads += [feed_fifo(data / f"validation_{e}", val_records) for e in range(2)]
    proc = subprocess.run([TRAIN], env=train_env(base), capture_output=True, text=True, timeout=540, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Pipe mode" in proc.stdout
    history = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]
    assert (base / "model" / "model_best.params").exists()
    for t in threads:
        t.join(5)
        assert not t.is_alive()


@pytest.mark.timeout(300)
def test_a_stream_cut_mid_record_is_a_client_error_naming_the_record(tmp_path, generated_dataset):
    base = pipe_job(tmp_path, {**TINY, "epochs": 1})
    data = base / "input" / "data"
    train_records = records(pairs(generated_dataset, "train"))[:6]
    feed_fifo(data / "train_0", train_records, cut_last=True)
    proc = subprocess.run([TRAIN], env=train_env(base), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 2, proc.stdout[-3000:]
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ClientError: train_0: record 5")
    assert "cut short" in failure or "truncated" in failure or "ended" in failure
