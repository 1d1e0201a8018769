"""The real scoring server (gunicorn + Flask) on a loopback port, with a model made by `train`."""

from __future__ import annotations

import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np
import pytest
import requests
from PIL import Image

from benchmarks.common.server import Server
from gluonseg.codecs import record_pb2
from gluonseg.palette import voc_palette

PROTOBUF_TYPES = ["application/x-recordio-protobuf", "application/x-protobuf"]


@pytest.fixture(scope="module")
def server(trained_model_dir):
    srv = Server(trained_model_dir, workers=2).start()
    srv.initial_workers = sorted(srv.worker_pids())
    yield srv
    srv.stop()


def jpeg_bytes(width=120, height=90, seed=0, mode="RGB", fmt="JPEG", **save) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def post(server, body, content_type="image/jpeg", accept=None, **kwargs):
    headers = {"Content-Type": content_type} if content_type else {}
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(server.url + "/invocations", data=body, headers=headers, timeout=120, **kwargs)


def png_mask(response) -> np.ndarray:
    img = Image.open(io.BytesIO(response.content))
    assert img.mode == "P"
    return np.array(img)


def notebook_decode(content: bytes, tmp_path) -> np.ndarray:
    """The SageMaker notebook's decoder, verbatim in spirit: MXRecordIO, Record, reshape, squeeze, argmax."""
    path = tmp_path / "response.rec"
    path.write_bytes(content)
    rec = mx.recordio.MXRecordIO(str(path), "r")
    record = record_pb2.Record()
    record.ParseFromString(rec.read())
    rec.close()
    values = np.array(record.features["target"].float32_tensor.values)
    shape = list(record.features["shape"].int32_tensor.values)
    return np.squeeze(values.reshape(shape), axis=0)


def test_ping_is_200_with_empty_body(server):
    r = requests.get(server.url + "/ping", timeout=2)
    assert r.status_code == 200 and r.content == b""


def test_execution_parameters(server):
    r = requests.get(server.url + "/execution-parameters", timeout=5)
    assert r.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}


@pytest.mark.parametrize("accept", [None, "", "*/*", "image/png", "image/*", "text/html, image/png;q=0.9"])
def test_png_mask_at_input_size_for_default_and_explicit_accept(server, accept):
    r = post(server, jpeg_bytes(131, 77), accept=accept)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.mode == "P" and img.size == (131, 77)
    assert img.getpalette()[:768] == voc_palette()
    assert png_mask(r).max() < 4


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("image/jpeg", jpeg_bytes()),
        ("image/png", jpeg_bytes(fmt="PNG")),
        ("application/x-image", jpeg_bytes()),
        ("image/jpeg", jpeg_bytes(mode="L")),
        ("image/jpeg", jpeg_bytes(mode="CMYK")),
        ("image/png", jpeg_bytes(mode="RGBA", fmt="PNG")),
        ("image/png", jpeg_bytes(mode="P", fmt="PNG")),
        ("image/jpeg", jpeg_bytes(progressive=True)),
    ],
)
def test_every_request_type_and_colour_mode(server, content_type, body):
    r = post(server, body, content_type=content_type)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (120, 90)


def test_exif_orientation_is_applied(server):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 100, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90: the viewer shows 40 wide, 100 high
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    r = post(server, buf.getvalue())
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (40, 100)


@pytest.mark.parametrize("accept", PROTOBUF_TYPES)
def test_protobuf_decoded_as_the_notebook_does_equals_the_png(server, accept, tmp_path):
    body = jpeg_bytes(97, 61, seed=3)
    proto = post(server, body, accept=accept)
    assert proto.status_code == 200, proto.text
    assert proto.headers["Content-Type"] == accept
    probs = notebook_decode(proto.content, tmp_path)
    assert probs.shape == (4, 61, 97)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    mask = png_mask(post(server, body, accept="image/png"))
    assert np.array_equal(np.argmax(probs, axis=0), mask)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None, "image/gif"])
def test_unsupported_content_type_is_415(server, content_type):
    r = post(server, jpeg_bytes(), content_type=content_type)
    assert r.status_code == 415
    assert "image/jpeg" in r.json()["error"]


@pytest.mark.parametrize("accept", ["text/csv", "application/json", "image/jpeg"])
def test_unacceptable_accept_is_406(server, accept):
    r = post(server, jpeg_bytes(), accept=accept)
    assert r.status_code == 406
    assert "image/png" in r.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xd8\xff\xe0garbage",
        jpeg_bytes()[:400],
        b"\x89PNG\r\n\x1a\n" + b"0" * 50,
        np.random.default_rng(0).bytes(5000),
    ],
)
def test_bad_images_are_400_with_a_json_reason(server, body):
    r = post(server, body)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json" and r.json()["error"]


def test_body_over_the_limit_is_413_with_and_without_content_length(server):
    big = b"\xff" * (6 * 1024 * 1024 + 10)
    r = post(server, big)
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():
        for _ in range(7):
            yield b"\0" * (1024 * 1024)

    r = post(server, chunks())
    assert r.status_code == 413


def test_decompression_bomb_is_413(server):
    img = Image.new("L", (20000, 20000))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert len(buf.getvalue()) < 6 * 1024 * 1024
    start = time.monotonic()
    r = post(server, buf.getvalue(), content_type="image/png")
    assert r.status_code == 413
    assert time.monotonic() - start < 10


def test_sixteen_concurrent_requests_all_answered_correctly(server):
    """16 clients at once against 2 workers + 8 waiting (GLUONSEG_MAX_QUEUE's default): the rest are told
    503 + Retry-After at once, and a client that waits as told is then answered, correctly."""
    bodies = [jpeg_bytes(64 + 5 * i, 48 + 3 * i, seed=i) for i in range(16)]
    serial = [png_mask(post(server, b)) for b in bodies]
    busy = []

    def post_until_served(body):
        while (r := post(server, body)).status_code == 503:
            busy.append(r)
            time.sleep(float(r.headers["Retry-After"]))
        return r

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post_until_served, bodies))
    for i, r in enumerate(responses):
        assert r.status_code == 200
        assert np.array_equal(png_mask(r), serial[i])
    assert all("GLUONSEG_MAX_QUEUE" in r.json()["error"] for r in busy)
    assert requests.get(server.url + "/ping", timeout=2).status_code == 200


def test_ping_503_when_the_model_cannot_load(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "hyperparams.json").write_text("{not json")
    srv = Server(broken, workers=1).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            try:
                status = requests.get(srv.url + "/ping", timeout=2).status_code
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert status == 503
        assert post(srv, jpeg_bytes()).status_code == 503
        assert "model failed to load" in srv.output()
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_requests(trained_model_dir):
    srv = Server(trained_model_dir, workers=1).start()
    results = {}
    big = jpeg_bytes(1600, 1200, seed=5)

    def slow_request():
        results["r"] = post(srv, big, accept="application/x-protobuf")

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(120)
    code = srv.stop()
    assert results["r"].status_code == 200
    assert code == 0


@pytest.mark.parametrize("accept", ["image/png", "application/x-recordio-protobuf"])
def test_gluonseg_transform_writes_what_invocations_returns(server, trained_model_dir, tmp_path, accept):
    import subprocess
    import sys
    from pathlib import Path

    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    goods = {
        "a.jpg": jpeg_bytes(70, 50, seed=1),
        "nested/b.jpg": jpeg_bytes(45, 66, seed=2),
        "c.png": jpeg_bytes(30, 30, seed=3, fmt="PNG"),
    }
    for name, data in goods.items():
        (src / name).write_bytes(data)
    (src / "broken.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "gluonseg"),
            "transform",
            "--model-dir",
            str(trained_model_dir),
            "--input",
            str(src),
            "--output",
            str(out),
            "--accept",
            accept,
            "--jobs",
            "2",
            "--backend",
            "mxnet",  # as the server fixture (benchmarks.common.server.Server pins the reference)
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "3 of 4 file(s) transformed" in proc.stdout
    assert "broken.jpg: the request body is not a recognised image format" in proc.stderr
    for name, data in goods.items():
        expected = post(server, data, accept=accept).content
        assert (out / (name + ".out")).read_bytes() == expected, name
    assert not (out / "broken.jpg.out").exists()


def test_no_worker_died_during_the_bad_requests_above(server):
    # Runs last in this module: every bad body, header and size above went to these same workers.
    assert len(server.initial_workers) == 2
    assert sorted(server.worker_pids()) == server.initial_workers
    assert "Worker exiting" not in server.output() and "WORKER TIMEOUT" not in server.output()
