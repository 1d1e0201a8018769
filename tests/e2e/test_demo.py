"""`make demo` in its quick form: every user command in sequence, and an honest summary."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def test_quick_demo_runs_every_command_and_reports_what_they_wrote(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "gluonseg.demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "evaluation" / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mIOU"] == report["mIOU"] and summary["pixel_accuracy"] == report["pixel_accuracy"]
    assert f"validation mIOU:     {report['mIOU']:.4f}" in proc.stdout
    assert summary["argmax_equals_png"] is True
    # The server ran the serving default: auto measured the backends at the first load and said what it chose.
    choice = json.loads((out / "model" / "backend-choice.json").read_text())["choice"]
    assert f"server backend:      {choice[0]} {choice[1]}, loaded in " in proc.stdout
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
