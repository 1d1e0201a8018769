"""Both images hosting a model as SageMaker hosts it: `docker run -v MODEL:/opt/ml/model:ro IMAGE serve`.

An estimator's deploy() hosts the training image, so the training image serves too. The model folder is the
one a user packs after serving it once with `gluonseg serve` (the ONNX export and auto's choice inside), mounted
read-only as Kubernetes and most hosts mount model volumes; the containers must answer what `gluonseg serve`
answered, with the backend it chose.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from gluonseg.codecs.decode import decode_probabilities
from tests.support.containers import ACCEPTS, answers

PING_LIMIT_S = 240  # SageMaker: the container must pass /ping within 4 minutes of start
LOAD_LINE = re.compile(r"(\d+) worker\(s\) x (\d+) thread\(s\)")


def mask(png: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(png)))


def large_jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height), Image.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("image", ["serve", "train"])
def test_the_image_serves_a_read_only_model_as_gluonseg_serve_does(image, containers, packed_model):
    model = packed_model["model"]
    server = containers(image, "serve", volumes={model: ("/opt/ml/model", "ro")}).serving().start()
    seconds = server.wait_ready(PING_LIMIT_S)
    logs = server.logs()
    # The serving default, as `gluonseg serve` runs it (the CPU image used to force MXNet FP32).
    assert "backend auto, precision fp32 (the serving default)" in logs, logs[-3000:]
    choice = json.loads((model / "backend-choice.json").read_text())["choice"]
    assert "backend auto: chose {} {}".format(*choice) in packed_model["log"]
    assert (
        "backend auto: {} {} (measured before on this machine: /opt/ml/model/backend-choice.json)".format(*choice)
        in logs
    ), logs[-3000:]
    assert "Read-only file system" not in logs
    page = requests.get(server.url + "/", timeout=30)  # the page to try the model ships in the image
    assert page.status_code == 200 and "gluonseg: try the model" in page.text

    got = answers(server.url, packed_model["pictures"])
    for ours, theirs in zip(got, packed_model["answers"], strict=True):
        np.testing.assert_array_equal(mask(ours["image/png"]), mask(theirs["image/png"]))
        key = ACCEPTS[1]
        np.testing.assert_allclose(decode_probabilities(ours[key]), decode_probabilities(theirs[key]), atol=1e-6)
    print(f"{image}: /ping 200 after {seconds:.1f} s with backend {' '.join(choice)}")


@pytest.mark.parametrize("image", ["serve", "train"])
def test_docker_stop_lets_the_requests_in_flight_finish_and_exits_0(image, containers, packed_model):
    server = containers(image, "serve", volumes={packed_model["model"]: ("/opt/ml/model", "ro")}).serving().start()
    server.wait_ready(PING_LIMIT_S)
    pictures = [large_jpeg(480, 360, seed) for seed in range(6)]  # 2 running, 4 waiting in nginx's queue
    results: list[tuple[int | str, float]] = []

    def post(body: bytes) -> None:
        try:
            r = requests.post(
                server.url + "/invocations",
                data=body,
                headers={"Content-Type": "image/jpeg", "Accept": "application/x-recordio-protobuf"},
                timeout=70,
            )
            results.append((r.status_code, time.monotonic()))
        except requests.RequestException as exc:
            results.append((type(exc).__name__, time.monotonic()))

    threads = [threading.Thread(target=post, args=(body,)) for body in pictures]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not results and time.monotonic() < deadline:  # the first answer: 4 or 5 are still held then
        time.sleep(0.01)
    stop_sent = time.monotonic()
    code = server.stop(grace_s=30)  # SageMaker: SIGTERM, then SIGKILL 30 s later
    for thread in threads:
        thread.join(70)
    assert code == 0, server.logs()[-3000:]
    assert [status for status, _ in results] == [200] * len(pictures), server.logs()[-3000:]
    assert max(done for _, done in results) > stop_sent  # some were still running when the stop came
    assert "received SIGTERM: stopping gracefully" in server.logs()


def test_batch_transform_as_sagemaker_sets_it_up(containers, packed_model):
    """SAGEMAKER_BATCH and the job's limits: /execution-parameters, MaxConcurrentTransforms requests at once
    (none refused), and a payload just under MaxPayloadInMB answered, just over it refused with a reason."""
    env = {
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "12",
    }
    server = containers("serve", "serve", env=env, volumes={packed_model["model"]: ("/opt/ml/model", "ro")})
    server.serving().start().wait_ready(PING_LIMIT_S)
    params = requests.get(server.url + "/execution-parameters", timeout=5).json()
    assert params == {"MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 2}

    pictures, reference = packed_model["pictures"], packed_model["answers"]
    jobs = [(i % len(pictures)) for i in range(12)]
    replies: dict[int, requests.Response] = {}

    def post(slot: int) -> None:
        replies[slot] = requests.post(
            server.url + "/invocations",
            data=pictures[jobs[slot]],
            headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
            timeout=70,
        )

    threads = [threading.Thread(target=post, args=(slot,)) for slot in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(r.status_code for r in replies.values()) == [200] * len(jobs), [
        r.text for r in replies.values() if r.status_code != 200
    ]
    for slot, reply in replies.items():
        np.testing.assert_array_equal(mask(reply.content), mask(reference[jobs[slot]]["image/png"]))

    limit = 2 * 1024 * 1024
    near = jpeg_just_under(limit)
    r = requests.post(server.url + "/invocations", data=near, headers={"Content-Type": "image/jpeg"}, timeout=70)
    assert r.status_code == 200, r.text
    assert mask(r.content).shape == np.array(Image.open(io.BytesIO(near))).shape[:2]
    over = near + b"\0" * (limit - len(near) + 1)
    r = requests.post(server.url + "/invocations", data=over, headers={"Content-Type": "image/jpeg"}, timeout=70)
    assert r.status_code == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in r.json()["error"], r.text


def jpeg_just_under(limit: int, margin: int = 64 * 1024) -> bytes:
    """A JPEG of noise between limit - margin and limit bytes (noise hardly compresses: size follows area)."""
    rng = np.random.default_rng(0)
    width = 800
    for _ in range(10):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (width * 3 // 4, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
        if limit - margin <= len(buffer.getvalue()) <= limit:
            return buffer.getvalue()
        width = int(width * ((limit - margin / 2) / len(buffer.getvalue())) ** 0.5)
    raise AssertionError(f"no noise JPEG between {limit - margin} and {limit} bytes")


@pytest.mark.parametrize(
    "options,workers,threads",
    [
        (("--cpus", "1", "--memory", "3g"), 1, 1),  # before: 1 worker x 2 threads on a 1-CPU quota
        (("--cpus", "1"), 1, 1),  # the quota alone: before, 2 workers
        (("--memory", "3g"), 1, 2),  # the memory alone: one worker fits, and it has both cores
        (("--cpuset-cpus", "0"), 1, 1),  # the affinity mask
    ],
)
def test_worker_and_thread_counts_follow_the_container_limits(options, workers, threads, containers, packed_model):
    server = containers(
        "serve", "serve", options=options, volumes={packed_model["model"]: ("/opt/ml/model", "ro")}
    ).serving()
    server.start()
    line = server.wait_for_log(r"serving /opt/ml/model: .* " + LOAD_LINE.pattern, timeout=120)
    assert (int(line.group(1)), int(line.group(2))) == (workers, threads), line.group(0)


def test_auto_with_a_read_only_root_and_no_export_keeps_its_files_in_a_temporary_folder(containers, trained_model_dir):
    """A plain model folder (no export), read-only, in a container whose root is read-only too (the home's
    cache with it): auto exports and measures into a temporary folder, says so, and serves."""
    server = containers(
        "serve",
        "serve",
        options=("--read-only", "--tmpfs", "/tmp:rw,exec"),
        volumes={trained_model_dir: ("/opt/ml/model", "ro")},
        env={"GLUONSEG_AUTO_BUDGET_S": "30"},
    ).serving()
    server.start().wait_ready(PING_LIMIT_S)
    logs = server.logs()
    assert "keeping the ONNX export and backend choice in /tmp/gluonseg-1000/onnx/" in logs, logs[-3000:]
    assert "backend auto: chose" in logs
    r = requests.post(
        server.url + "/invocations",
        data=large_jpeg(320, 240, 1),
        headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
        timeout=70,
    )
    assert r.status_code == 200 and mask(r.content).shape == (240, 320)
