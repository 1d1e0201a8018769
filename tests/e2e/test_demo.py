"""`make demo` in its quick form: every user command in sequence, and an honest summary."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_quick_demo_runs_every_command_and_reports_what_they_wrote(tmp_path):
    out = tmp_path / "demo"
    model_file = out / "model" / "hyperparams.json"  # written once, when training has finished
    lines: list[tuple[str, bool]] = []  # each stdout line, and whether training had finished when it came
    with (
        open(tmp_path / "stderr.txt", "w") as err,
        subprocess.Popen(
            [sys.executable, "-m", "gluonseg.demo", "--quick", "--epochs", "2", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as proc,
    ):
        for line in proc.stdout:  # read as the demo writes, not after it ends
            lines.append((line, model_file.exists()))
        proc.wait(timeout=600)
    stdout = "".join(line for line, _ in lines)
    assert proc.returncode == 0, stdout[-4000:] + (tmp_path / "stderr.txt").read_text()[-4000:]
    # `make demo` is not silent while it trains: each epoch's line reaches the terminal as the epoch ends.
    epochs = [(line, done) for line, done in lines if re.match(r"  epoch \d/2: train loss \S+, validation mIOU", line)]
    assert [line.split(":")[0] for line, _ in epochs] == ["  epoch 1/2", "  epoch 2/2"]
    assert epochs[0][1] is False, "the first epoch's line arrived only after training had ended"
    assert re.search(r"^  best: epoch [12] \(the model saved\), validation mIOU", stdout, re.M)
    report = json.loads((out / "evaluation" / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mIOU"] == report["mIOU"] and summary["pixel_accuracy"] == report["pixel_accuracy"]
    assert f"validation mIOU:     {report['mIOU']:.4f}" in stdout
    assert summary["argmax_equals_png"] is True
    # The server ran the serving default: auto measured the backends at the first load and said what it chose.
    choice = json.loads((out / "model" / "backend-choice.json").read_text())["choice"]
    assert f"server backend:      {choice[0]} {choice[1]}, loaded in " in stdout
    # the TensorBoard line names the job's event files, and the page's address came while the server was up
    board = out / "model" / "output" / "tensorboard"
    assert f"--logdir {board}" in stdout
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()  # TensorBoard's own reader: the scalars of both epochs and the validation pictures
    assert [s.step for s in events.Scalars("validation/mIOU")] == [0, 1]
    history = json.loads((out / "model" / "output" / "data" / "metrics.json").read_text())
    assert [s.value for s in events.Scalars("validation/mIOU")] == pytest.approx([r["mIOU"] for r in history])
    assert sorted(events.Tags()["images"]) == [f"validation_pictures/{i}" for i in range(3)]
    assert re.search(r"the page to try the model, while this server is up: http://127\.0\.0\.1:\d+/", stdout)
    # training's INT8 step ran (int8_model's default) and the summary says what its record says
    int8 = json.loads((out / "model" / "model-int8-onnx.json").read_text())
    assert f"INT8 model:          {'kept' if int8['kept'] else 'not kept'}: {100 * int8['agreement']:.2f}%" in stdout
    for name in ("training_curves.png", "evaluation/confusion_matrix.png"):
        Image.open(out / name).verify()
    overlays = sorted((out / "pictures").glob("*_overlay.png"))
    assert len(overlays) == 4
    for overlay in overlays:
        source = out / "data" / "validation" / (overlay.name.replace("_overlay.png", ".jpg"))
        assert Image.open(overlay).size == Image.open(source).size
    outs = sorted((out / "transform").glob("*.out"))
    assert len(outs) == len(list((out / "data" / "validation").glob("*.jpg")))
    first = Image.open(outs[0])
    assert first.mode == "P" and np.array(first).max() < 4
