"""The page on the scoring server (`GET /`, issue #25), driven in Debian's headless chromium against the real
server (nginx + gunicorn on a loopback port): a picked picture's overlay, legend and shares equal what
/invocations answers for the same picture. The screenshot is kept in test-artifacts/page.png."""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
import requests
from PIL import Image

from benchmarks.common.server import Server
from gluonseg.palette import class_names
from serve.app import create_app
from serve.handler import SegmentationHandler
from serve.settings import ServerSettings
from tools.browser import Browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(REPO / "test-artifacts")


@pytest.fixture
def varied_model(trained_model_dir, tmp_path):
    """The tiny trained model with a random classifier (seeded): one epoch of training calls every pixel
    background, and a page that only ever showed background would prove little."""
    model = Path(shutil.copytree(trained_model_dir, tmp_path / "model"))
    params = mx.nd.load(str(model / "model_best.params"))
    weight = params["head.block.4.weight"]
    params["head.block.4.weight"] = mx.nd.array(np.random.default_rng(0).standard_normal(weight.shape))
    params["head.block.4.bias"][:] = 0
    mx.nd.save(str(model / "model_best.params"), params)
    return model


def test_the_page_shows_the_overlay_legend_and_shares_invocations_answers(varied_model, generated_dataset):
    picture_path = sorted((generated_dataset / "validation").glob("*.jpg"))[1]
    picture = Image.open(picture_path)
    server = Server(varied_model, workers=1).start()
    try:
        page = requests.get(server.url + "/", timeout=30)
        answer = requests.post(
            server.url + "/invocations",
            data=picture_path.read_bytes(),
            headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
            timeout=60,
        )
        with Browser() as browser:
            browser.open(server.url + "/")
            browser.choose_file("#file", picture_path)
            state = browser.wait_for(
                "['done', 'error'].includes(document.getElementById('status').dataset.state) && "
                "document.getElementById('status').dataset.state",
                timeout=120,
            )
            status = browser.evaluate("document.getElementById('status').textContent")
            legend = browser.evaluate(
                "[...document.querySelectorAll('#legend li')].map(li => "
                "({cls: +li.dataset.class, pixels: +li.dataset.pixels, text: li.textContent}))"
            )
            size = browser.evaluate(
                "[document.getElementById('overlay').width, document.getElementById('overlay').height]"
            )
            ran = browser.evaluate("document.getElementById('backend').textContent")
            took = browser.evaluate("+document.getElementById('time').textContent")
            shot = browser.screenshot(ARTIFACTS / "page.png")
    finally:
        server.stop()

    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # self-contained: nothing fetched elsewhere
    assert state == "done", status
    mask = np.asarray(Image.open(io.BytesIO(answer.content)))
    counts = np.bincount(mask.ravel(), minlength=4)
    expected = {c: int(n) for c, n in enumerate(counts) if n}
    assert len(expected) >= 2, expected  # several classes, so the colour -> class mapping is really exercised
    assert {row["cls"]: row["pixels"] for row in legend} == expected
    names = class_names(4)
    for row in legend:
        assert row["text"] == f"{names[row['cls']]}: {100 * row['pixels'] / mask.size:.1f}%"
    assert [row["pixels"] for row in legend] == sorted((row["pixels"] for row in legend), reverse=True)
    assert size == list(picture.size) and mask.shape == picture.size[::-1]
    assert ran == "mxnet fp32" and took > 0
    assert Image.open(shot).size == (1280, 900)


def test_the_page_carries_the_models_classes_and_can_be_turned_off(trained_model_dir):
    settings = ServerSettings(model_dir=trained_model_dir, backend="mxnet")
    client = create_app(settings, SegmentationHandler()).test_client()
    page = client.get("/")
    assert page.status_code == 200
    config = json.loads(re.search(r'<script id="config" type="application/json">(.*?)</script>', page.text).group(1))
    assert config["class_names"] == class_names(4) and len(config["palette"]) == 12
    assert (config["algorithm"], config["backend"], config["precision"]) == ("fcn", "mxnet", "fp32")

    off = create_app(replace(settings, page=False), SegmentationHandler()).test_client().get("/")
    assert off.status_code == 404 and "GLUONSEG_PAGE=false" in off.json["error"]


def test_gluonseg_page_must_be_a_boolean(monkeypatch, tmp_path):
    from gluonseg.errors import ClientError

    monkeypatch.setenv("GLUONSEG_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("GLUONSEG_PAGE", "false")
    assert ServerSettings.from_env().page is False
    monkeypatch.setenv("GLUONSEG_PAGE", "maybe")
    with pytest.raises(ClientError, match="GLUONSEG_PAGE must be true or false"):
        ServerSettings.from_env()
