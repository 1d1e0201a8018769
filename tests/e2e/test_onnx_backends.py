"""ONNX export (FCN, PSP, DeepLabV3) and the ONNX Runtime / OpenVINO backends, on tiny models trained by `train`."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import requests
from PIL import Image

from benchmarks.common.server import Server
from gluonseg.artifacts import read_model_dir
from gluonseg.codecs.decode import decode_image, decode_probabilities
from gluonseg.data.transforms import normalize
from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.inference import backend_choice, onnx_export
from gluonseg.inference.loading import load_predictor
from gluonseg.inference.onnx_cache import exported_model
from gluonseg.inference.onnx_export import export_onnx
from gluonseg.util import cpu_flags

REPO = Path(__file__).resolve().parents[2]
GLUONSEG = str(Path(sys.executable).parent / "gluonseg")
FP32_EQUAL = 0.999  # the floor for FP32 backends, and the export's own
FP32_PROBABILITY_ATOL = 1e-4
BF16_EQUAL = 0.97  # OpenVINO BF16 on the tiny trained model (measured 99.3-99.8%); a stated floor, not a target


def pictures(dataset: Path, count: int = 4) -> list[np.ndarray]:
    paths = sorted((dataset / "validation").iterdir())[:count]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def jpeg(picture: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(picture).save(out, "JPEG", quality=95)
    return out.getvalue()


def equal_share(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.fixture
def model_copy(trained_model_dir, tmp_path):
    """The trained FCN folder, copied: exports and choices are written into it."""
    return Path(shutil.copytree(trained_model_dir, tmp_path / "model"))


# -- export


@pytest.mark.parametrize("algorithm", ["fcn", "psp", "deeplab"])
def test_fixed_shape_export_runs_like_mxnet_in_onnx_runtime_and_openvino(
    algorithm, trained_algorithm_dir, generated_dataset, tmp_path
):
    model = trained_algorithm_dir(algorithm)
    record = export_onnx(model, tmp_path, height=72, width=96)
    assert record["dynamic"] is False and record["input"]["shape"] == [1, 3, 72, 96]
    assert record["output"] == {"name": "logits", "shape": [1, 4, 72, 96], "dtype": "float32"}
    assert record["algorithm"] == algorithm and record["num_classes"] == 4 and record["parity"]["equal_argmax"] >= 0.999
    assert record["mean"] == [0.485, 0.456, 0.406] and record["std"] == [0.229, 0.224, 0.225]
    assert json.loads((tmp_path / "model.json").read_text()) == record
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["data"]  # weights are initializers only: runtimes fold constants

    mxnet = load_predictor(model)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(tmp_path / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for picture in pictures(generated_dataset):
        picture = np.asarray(Image.fromarray(picture).resize((96, 72), Image.BILINEAR))
        reference = mxnet.native_logits(picture).argmax(axis=0)  # 96x72: its own canvas, no padding
        data = normalize(picture)[None].astype(np.float32)
        assert equal_share(session.run(None, {"data": data})[0][0].argmax(axis=0), reference) >= FP32_EQUAL
        assert equal_share(compiled(data)[0][0].argmax(axis=0), reference) >= FP32_EQUAL
    with pytest.raises(Exception):  # noqa: B017, PT011 - a fixed-shape file refuses another size
        session.run(None, {"data": np.zeros((1, 3, 64, 64), np.float32)})


@pytest.mark.parametrize("algorithm", ["fcn", "deeplab", "psp"])
def test_free_shape_export_answers_two_sizes_like_mxnet(algorithm, trained_algorithm_dir, generated_dataset, tmp_path):
    model = trained_algorithm_dir(algorithm)
    proc = subprocess.run(
        [GLUONSEG, "export", "--model-dir", str(model), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout and "any H x W" in proc.stdout
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["dynamic"] is True and record["input"]["shape"] == ["batch", 3, "height", "width"]
    mxnet = load_predictor(model)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    picture = pictures(generated_dataset, 1)[0]
    for size in [(64, 80), (120, 88)]:  # neither is the crop (64x64); the second does not divide PSP's bins
        resized = np.asarray(Image.fromarray(picture).resize(size[::-1], Image.BILINEAR))
        reference = mxnet.native_logits(resized)
        ours = session.run(None, {"data": normalize(resized)[None].astype(np.float32)})[0][0]
        assert ours.shape == reference.shape == (4, *size)
        assert equal_share(ours.argmax(axis=0), reference.argmax(axis=0)) >= FP32_EQUAL
        assert np.abs(ours - reference).max() < 1e-3


def test_export_of_a_broken_model_folder_is_a_client_error(model_copy, tmp_path):
    (model_copy / "model_best.params").write_bytes(b"not parameters")
    out = tmp_path / "out"
    command = [GLUONSEG, "export", "--model-dir", str(model_copy), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "ClientError" in proc.stderr and "model_best.params: not an MXNet parameter file" in proc.stderr
    assert "Traceback" not in proc.stderr and "Invalid NDArray file format" in proc.stderr
    assert not (out / "model.onnx").exists()
    proc = subprocess.run(
        [GLUONSEG, "export", "--model-dir", str(model_copy), "--out", str(out), "--height", "70", "--width", "64"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--height must be a positive multiple of 8, got 70" in proc.stderr


def test_an_export_that_disagrees_with_mxnet_leaves_no_file(model_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "MIN_EQUAL_ARGMAX", 1.01)  # no export can reach it: the failure path runs
    with pytest.raises(AlgorithmError, match="disagrees with the MXNet network"):
        export_onnx(model_copy, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# -- backends


def test_onnx_backends_predict_what_mxnet_predicts(model_copy, generated_dataset, tmp_path):
    mxnet = load_predictor(model_copy)
    runs = {
        ("onnxruntime", "fp32"): load_predictor(model_copy, backend="onnxruntime"),
        ("openvino", "fp32"): load_predictor(model_copy, backend="openvino"),
        ("openvino", "bf16"): load_predictor(model_copy, backend="openvino", precision="bf16"),
    }
    assert (model_copy / "model.onnx").exists()  # exported on first use, into the writable model folder
    for (backend, _), predictor in runs.items():
        assert predictor.backend == backend
        for picture in pictures(generated_dataset):
            for scale_picture in (picture, picture[:-3, :-5]):  # off the multiple of 8 too: padded and cropped
                ours, theirs = predictor.predict(scale_picture, True), mxnet.predict(scale_picture, True)
                if predictor.precision == "fp32":
                    assert equal_share(ours.mask, theirs.mask) >= FP32_EQUAL
                    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=FP32_PROBABILITY_ATOL)
                else:
                    assert equal_share(ours.mask, theirs.mask) >= BF16_EQUAL
    with pytest.raises(ClientError, match="backend onnxruntime runs INT8 from model-int8.onnx .* none kept"):
        load_predictor(model_copy, backend="onnxruntime", precision="int8")  # trained with int8_model=False


def test_a_fixed_shape_export_in_the_model_folder_is_left_alone(model_copy, tmp_path, monkeypatch):
    from gluonseg.artifacts import read_model_dir

    export_onnx(model_copy, model_copy, height=64, width=64)
    fixed = (model_copy / "model.onnx").read_bytes()
    monkeypatch.setenv("GLUONSEG_CACHE_DIR", str(tmp_path / "cache"))
    path = exported_model(read_model_dir(model_copy))
    assert path.parent.parent == tmp_path / "cache" / "onnx" and path.exists()
    assert (model_copy / "model.onnx").read_bytes() == fixed
    assert exported_model(read_model_dir(model_copy)) == path  # found again, not exported again
    assert json.loads((path.parent / "model.json").read_text())["dynamic"] is True


def test_auto_measures_chooses_keeps_and_reuses_its_choice(model_copy, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gluonseg")
    predictor = load_predictor(model_copy, backend="auto")
    record = json.loads((model_copy / backend_choice.CHOICE_FILE).read_text())
    rows = {(r["backend"], r["precision"]): r for r in record["measured"]}
    assert rows["mxnet", "fp32"]["agreement"] == 1.0
    assert {("onnxruntime", "fp32"), ("openvino", "fp32")} <= set(rows)
    qualified = [r for r in record["measured"] if r["agreement"] >= backend_choice.MIN_AGREEMENT]
    fastest = min(qualified, key=lambda r: r["seconds"])
    assert record["choice"] == [fastest["backend"], fastest["precision"]]
    assert [predictor.backend, predictor.precision] == record["choice"]
    assert "backend auto: chose" in caplog.text

    def no_measuring(*args):
        raise AssertionError("a kept choice must not be measured again")

    monkeypatch.setattr(backend_choice, "median_seconds", no_measuring)
    again = load_predictor(model_copy, backend="auto")
    assert [again.backend, again.precision] == record["choice"]

    record["key"]["threads"] += 1  # another machine shape: measured again
    (model_copy / backend_choice.CHOICE_FILE).write_text(json.dumps(record))
    with pytest.raises(AssertionError, match="must not be measured again"):
        load_predictor(model_copy, backend="auto")


@contextlib.contextmanager
def read_only(*folders: Path):
    """Folders nobody may write, root included (chattr +i: what a read-only mount does to a container's root)."""
    subprocess.run(["chattr", "+i", *map(str, folders)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, folders)], check=True)


def test_auto_with_a_read_only_model_folder_reads_its_shipped_choice_then_keeps_its_own_elsewhere(
    model_copy, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="gluonseg")
    monkeypatch.setenv("GLUONSEG_AUTO_BUDGET_S", "0")  # the reference alone: what matters here is where files go
    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    cache.mkdir()
    temp.mkdir()
    monkeypatch.setenv("GLUONSEG_CACHE_DIR", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    exported_model(read_model_dir(model_copy))  # `gluonseg export --out M`, or one `gluonseg serve` of M
    chosen = load_predictor(model_copy, backend="auto")
    before = sorted(p.name for p in model_copy.iterdir())
    assert backend_choice.CHOICE_FILE in before and "model.onnx" in before

    def no_measuring(*args):
        raise AssertionError("a shipped choice must not be measured again")

    monkeypatch.setattr(backend_choice, "median_seconds", no_measuring)
    with read_only(model_copy):  # mounted :ro, as Kubernetes and most hosts mount model volumes
        again = load_predictor(model_copy, backend="auto")
    assert (again.backend, again.precision) == (chosen.backend, chosen.precision)
    assert sorted(p.name for p in model_copy.iterdir()) == before
    assert not any(cache.iterdir())  # nothing to write: no lock, no record

    # A shipped choice from another machine: measured again, and kept in the cache.
    monkeypatch.undo()
    monkeypatch.setenv("GLUONSEG_AUTO_BUDGET_S", "0")
    monkeypatch.setenv("GLUONSEG_CACHE_DIR", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    record = json.loads((model_copy / backend_choice.CHOICE_FILE).read_text())
    record["key"]["threads"] += 1
    (model_copy / backend_choice.CHOICE_FILE).write_text(json.dumps(record))
    with read_only(model_copy):
        load_predictor(model_copy, backend="auto")
    kept = list(cache.glob(f"onnx/*/{backend_choice.CHOICE_FILE}"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["key"]["threads"] == record["key"]["threads"] - 1

    # The cache read-only too: a temporary folder, and the log says so.
    shutil.rmtree(cache)
    cache.mkdir()
    caplog.clear()
    with read_only(model_copy, cache):
        load_predictor(model_copy, backend="auto")
    assert list(temp.glob(f"gluonseg-*/onnx/*/{backend_choice.CHOICE_FILE}"))
    assert "keeping the ONNX export and backend choice in " + str(temp) in caplog.text


def test_auto_skips_what_the_budget_leaves_no_time_for_and_says_so(model_copy, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gluonseg")
    monkeypatch.setenv("GLUONSEG_AUTO_BUDGET_S", "0")  # spent once the reference is measured
    predictor = load_predictor(model_copy, backend="auto")
    record = json.loads((model_copy / backend_choice.CHOICE_FILE).read_text())
    assert [(r["backend"], r["precision"]) for r in record["measured"]] == [("mxnet", "fp32")]

    expected = backend_choice.candidates(read_model_dir(model_copy), cpu_flags())[1:]
    assert [tuple(pair) for pair in record["skipped"]] == expected and expected
    assert (predictor.backend, predictor.precision) == ("mxnet", "fp32")
    assert (
        "not measured, over the 0 s budget (GLUONSEG_AUTO_BUDGET_S): " + ", ".join(" ".join(pair) for pair in expected)
        in caplog.text
    )
    assert not (model_copy / "model.onnx").exists()  # nothing exported for candidates never built


# -- the server


@pytest.mark.parametrize(
    ("backend", "precision", "floor"), [("onnxruntime", "fp32", FP32_EQUAL), ("openvino", "bf16", BF16_EQUAL)]
)
def test_the_server_answers_with_each_backend_as_with_mxnet(backend, precision, floor, model_copy, generated_dataset):
    reference = load_predictor(model_copy)
    server = Server(model_copy, workers=1, GLUONSEG_BACKEND=backend, GLUONSEG_PRECISION=precision).start()
    try:
        for picture in pictures(generated_dataset, 3):
            body = jpeg(picture)
            expected = reference.predict(decode_image(body, "image/jpeg"), want_probabilities=True)
            png = requests.post(
                server.url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=60
            )
            assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
            mask = np.asarray(Image.open(io.BytesIO(png.content)))
            assert mask.shape == picture.shape[:2] and equal_share(mask, expected.mask) >= floor
            if precision == "fp32":
                answer = requests.post(
                    server.url + "/invocations",
                    data=body,
                    headers={"Content-Type": "image/jpeg", "Accept": "application/x-recordio-protobuf"},
                    timeout=60,
                )
                probabilities = decode_probabilities(answer.content)
                np.testing.assert_allclose(probabilities, expected.probabilities, atol=FP32_PROBABILITY_ATOL)
    finally:
        server.stop()
    log = server.log_path.read_text()
    # The worker says what it runs: BF16 where the CPU has BF16 instructions, else FP32, and says so.
    runs = precision if precision != "bf16" or set(backend_choice.BF16_FLAGS) & cpu_flags() else "fp32"
    assert f"{backend} {runs}" in log
    assert (runs != precision) == ("OpenVINO runs fp32 here, not bf16 (this CPU has no BF16 support)" in log)
    assert (model_copy / "model.onnx").exists()  # the model folder needed no extra step: exported at start-up


def test_the_readme_onnx_runtime_snippet_reproduces_the_servers_mask(trained_model_dir, generated_dataset, tmp_path):
    export_onnx(trained_model_dir, tmp_path / "export")
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- onnx-runtime:start -->")[1].split("<!-- onnx-runtime:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    reference = load_predictor(trained_model_dir)
    for index, picture in enumerate(pictures(generated_dataset, 2)):
        path = tmp_path / f"picture{index}.png"  # lossless, so the snippet and the server see the same pixels
        Image.fromarray(picture).resize((77, 61), Image.BILINEAR).save(path)  # sides off the multiple of 8
        namespace = {"EXPORT_DIR": str(tmp_path / "export"), "PICTURE": str(path)}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own snippet, as a user runs it
        expected = reference.predict_mask(np.asarray(Image.open(path).convert("RGB")))
        assert namespace["mask"].shape == expected.shape == (61, 77)
        assert equal_share(namespace["mask"], expected) >= FP32_EQUAL


def test_transform_takes_the_backend_flag_and_answers_like_mxnet(model_copy, generated_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index, picture in enumerate(pictures(generated_dataset, 3)):
        (images / f"p{index}.jpg").write_bytes(jpeg(picture))
    command = [GLUONSEG, "transform", "--model-dir", str(model_copy), "--input", str(images), "--output"]
    proc = subprocess.run([*command, str(tmp_path / "out"), "--backend", "onnxruntime"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = load_predictor(model_copy)
    for path in sorted(images.iterdir()):
        mask = np.asarray(Image.open(tmp_path / "out" / f"{path.name}.out"))
        expected = reference.predict_mask(decode_image(path.read_bytes(), "image/jpeg"))
        assert equal_share(mask, expected) >= FP32_EQUAL
    proc = subprocess.run([*command, str(tmp_path / "bad"), "--backend", "tensorrt"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'tensorrt'" in proc.stderr


def test_symbol_export_writes_the_graph_plain_mxnet_loads(trained_model_dir, tmp_path):
    import mxnet as mx

    proc = subprocess.run(
        [GLUONSEG, "export", "--model-dir", str(trained_model_dir), "--format", "symbol", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    symbol, params = str(tmp_path / "model-symbol.json"), str(tmp_path / "model-0000.params")
    net = mx.gluon.SymbolBlock.imports(symbol, ["data"], params)
    assert net(mx.nd.zeros((1, 3, 64, 64))).shape == (1, 4, 64, 64)


def test_the_server_defaults_to_auto_two_workers_measure_once_and_serve_the_same_choice(model_copy, generated_dataset):
    server = Server(model_copy, workers=2, GLUONSEG_BACKEND="").start(timeout=600)  # unset: the serving default
    try:
        body = jpeg(pictures(generated_dataset, 1)[0])
        answers = {
            requests.post(server.url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}).content
            for _ in range(4)
        }
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert log.count("backend auto, precision fp32 (the serving default)") == 2
    # One worker measured (holding the lock) while the other waited, then took its choice without measuring.
    assert log.count("backend auto: chose") == 1 and log.count("measured before on this machine") == 1
    assert log.count("exported ") == 1  # and one export, however many workers started
    record = json.loads((model_copy / backend_choice.CHOICE_FILE).read_text())
    assert log.count(f"4 classes, {record['choice'][0]} {record['choice'][1]}, native scale") == 2  # both workers
    assert len(answers) == 1  # every request, whichever worker took it, got the same mask


def test_openvino_worker_memory_stays_flat_over_pictures_of_varied_sizes(tmp_path):
    """OpenVINO keeps compiled kernels per input shape unless told not to: each new picture size cost memory
    for good (about +210 MB over these 120 pictures; +15 MB without the cache). Measured in a process of its own."""
    script = f"""
import random
from pathlib import Path
import numpy as np
from gluonseg.inference.loading import load_predictor
from tests.support.models import make_model_dir

predictor = load_predictor(make_model_dir(Path({str(tmp_path / "model")!r}), "fcn"), backend="openvino")
rng = random.Random(1)
probe = np.zeros((320, 320, 3), np.uint8)  # the same shape each time: RSS compared like for like
for i in range(120):
    height, width = rng.randint(64, 320), rng.randint(64, 320)
    predictor.predict(np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8))
    if i % 20 == 19:
        predictor.predict(probe)
        print("RSS", [int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmRSS")][0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("RSS ")]
    assert len(rss) == 6
    assert rss[-1] - rss[0] < 60, rss  # MB, from the 20th picture to the 120th
