"""A 24 MP picture through the real server at slide scale: a 24 MP mask, probabilities refused over their
bound with a JSON reason, the large-picture log line, and the worker's peak memory bounded."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from benchmarks.common.procfs import status_bytes
from benchmarks.common.server import Server

WIDTH, HEIGHT = 6000, 4000


def large_jpeg() -> bytes:
    """A 24 MP photo-like JPEG: a small random picture enlarged (smooth regions, a few MB)."""
    small = np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    picture = Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(trained_model_dir):
    # The working resolution is 1024 x 683 so that MXNet FP32 on two shared cores answers in seconds
    # (6 windows of 512); the picture, its decoding, the streamed resize to 24 MP and the mask are full size.
    # BENCHMARKS.md "large pictures" runs 24 and 100 MP at their own resolution.
    srv = Server(
        trained_model_dir,
        workers=1,
        GLUONSEG_INFERENCE_SCALE="slide",
        GLUONSEG_SLIDE_LONG_SIDE="1024",
        GLUONSEG_SLIDE_WINDOW="512",
        GLUONSEG_MAX_PROBABILITIES_MB="64",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="300",
    ).start()
    yield srv
    srv.stop()


def test_a_24_mp_jpeg_gets_a_24_mp_mask_in_bounded_worker_memory(server):
    body = large_jpeg()
    assert len(body) < 6 * 1024 * 1024
    (worker,) = server.worker_pids()
    before = status_bytes(worker, "VmHWM")
    r = requests.post(server.url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=300)
    assert r.status_code == 200, r.text
    mask = Image.open(io.BytesIO(r.content))
    assert mask.mode == "P" and mask.size == (WIDTH, HEIGHT)
    classes = np.unique(np.asarray(mask))
    assert set(classes.tolist()) <= {0, 1, 2, 3}
    # The peak it added: the decoded picture (PIL's 4 bytes a pixel, then numpy's 3), the mask and its
    # PNG image (1 + 1), and the working resolution's windows; never C x H x W floats (384 MB here).
    grown = status_bytes(worker, "VmHWM") - before
    assert grown < 10 * WIDTH * HEIGHT + (100 << 20), f"the worker's peak grew by {grown / 2**20:.0f} MB"
    assert f"{WIDTH}x{HEIGHT} picture (24.0 MP) at slide scale, TTA none: 6 windows" in server.output()


def test_probabilities_over_the_bound_are_a_413_with_a_reason(server):
    r = requests.post(
        server.url + "/invocations",
        data=large_jpeg(),
        headers={"Content-Type": "image/jpeg", "Accept": "application/x-recordio-protobuf"},
        timeout=300,
    )
    assert r.status_code == 413
    reason = r.json()["error"]
    assert "6000x4000 image with 4 classes" in reason and "GLUONSEG_MAX_PROBABILITIES_MB" in reason
    assert "Accept: image/png" in reason
