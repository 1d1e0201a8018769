"""INT8 and BF16 inference: the Predictor's precision option, the exported INT8 files, the server setting."""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from gluonseg.artifacts import BEST_PARAMS
from gluonseg.cli import main as cli_main
from gluonseg.data.images import load_image
from gluonseg.errors import ClientError
from gluonseg.inference import precision as quantization
from gluonseg.inference.geometry import network_tiles
from gluonseg.inference.loading import load_predictor
from serve.app import create_app
from serve.handler import SegmentationHandler
from serve.settings import ServerSettings
from tests.support.models import CLASSES, CROP, image_of, make_model_dir


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def fcn_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("fcn"), "fcn")


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for i in range(3):
        Image.fromarray(image_of(48 + 8 * i, 80, seed=10 + i)).save(folder / f"img{i}.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def fp32(fcn_dir):
    return load_predictor(fcn_dir)


@pytest.fixture(scope="module")
def int8(fcn_dir, calibration_dir):
    return load_predictor(fcn_dir, precision="int8", calibration_dir=calibration_dir)


# -- calibration tiles


def test_calibration_tiles_are_what_the_network_is_fed_at_crop_scale(fcn_dir, monkeypatch):
    fp32 = load_predictor(fcn_dir, scale="crop")
    image = image_of(50, 150, seed=4)  # resized to 64x192: five overlapping tiles
    fed = []
    original = fp32._forward_tile
    monkeypatch.setattr(fp32, "_forward_tile", lambda tile: fed.append(tile.copy()) or original(tile))
    fp32.predict(image)
    tiles = network_tiles(image, CROP)
    assert len(tiles) == len(fed) == 5
    for ours, theirs in zip(tiles, fed):
        assert ours.shape == (3, CROP, CROP) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)


def test_calibration_images_are_the_first_n_image_files(calibration_dir):
    paths = quantization.calibration_image_paths(calibration_dir, 2)
    assert [p.name for p in paths] == ["img0.jpg", "img1.jpg"]
    tiles = quantization.calibration_tiles(paths, CROP)
    assert tiles.shape == (4, 3, CROP, CROP)  # 4:3-ish pictures make two tiles each


def test_calibration_folder_mistakes_are_named(tmp_path):
    with pytest.raises(ClientError, match="holds no images"):
        quantization.calibration_image_paths(tmp_path, 5)
    with pytest.raises(ClientError, match="does not exist"):
        quantization.calibration_image_paths(tmp_path / "missing", 5)


# -- INT8


def test_int8_predictor_output_shape_dtype_and_closeness(fp32, int8):
    assert int8.precision == "int8" and fp32.precision == "fp32"
    image = image_of(45, 70, seed=5)
    prediction = int8.predict(image, want_probabilities=True)
    assert prediction.mask.shape == (45, 70) and prediction.mask.dtype == np.uint8
    assert prediction.probabilities.shape == (CLASSES, 45, 70) and prediction.probabilities.dtype == np.float32
    np.testing.assert_allclose(prediction.probabilities.sum(axis=0), 1.0, rtol=1e-5)
    assert prediction.mask.max() < CLASSES
    # Random weights make near-ties everywhere, so compare logits rather than masks.
    assert correlation(int8.averaged_logits(image), fp32.averaged_logits(image)) > 0.95
    # Native scale runs the INT8 graph re-specialised to the padded 64x72 shape.
    assert correlation(int8.native_logits(image), fp32.native_logits(image)) > 0.95


def test_int8_needs_files_or_calibration_images(fcn_dir):
    with pytest.raises(ClientError, match="GLUONSEG_CALIBRATION_DIR"):
        load_predictor(fcn_dir, precision="int8")


def test_unknown_precision_is_a_client_error(fcn_dir):
    with pytest.raises(ClientError, match="precision must be one of fp32, int8, bf16"):
        load_predictor(fcn_dir, precision="fp16")
    assert quantization.check_precision(" INT8 ") == "int8"


def test_exported_int8_loads_without_calibration_and_equals_load_time_quantization(
    tmp_path, fcn_dir, calibration_dir, int8
):
    folder = tmp_path / "model"
    shutil.copytree(fcn_dir, folder)
    assert cli_main(["quantize", "--model-dir", str(folder), "--calibration", str(calibration_dir), "--num", "3"]) == 0
    for name in (quantization.INT8_SYMBOL, quantization.INT8_PARAMS, quantization.INT8_RECORD):
        assert (folder / name).exists(), name
    written = json.loads((folder / quantization.INT8_RECORD).read_text())
    assert written["calibration_images"] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert written["calibration_tiles"] == 6 and written["crop_size"] == CROP
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left

    loaded = load_predictor(folder, precision="int8")  # no calibration images this time
    assert loaded.precision == "int8"
    image = image_of(60, 90, seed=6)
    # Same calibration tiles, same naive ranges: the exported graph computes what load-time quantization does.
    np.testing.assert_allclose(loaded.averaged_logits(image), int8.averaged_logits(image), rtol=1e-5, atol=1e-5)

    # The FP32 parameters change (retrained): the INT8 files no longer describe them and are ignored.
    arrays = mx.nd.load(str(folder / BEST_PARAMS))
    key = sorted(arrays)[0]
    arrays[key] = arrays[key] * 1.5
    mx.nd.save(str(folder / BEST_PARAMS), arrays)
    with pytest.raises(ClientError, match="GLUONSEG_CALIBRATION_DIR"):
        load_predictor(folder, precision="int8")


def test_int8_agrees_with_fp32_on_a_trained_model(tmp_path, trained_model_dir, generated_dataset):
    folder = tmp_path / "model"
    shutil.copytree(trained_model_dir, folder)  # the session's model folder stays as it is
    validation = generated_dataset / "validation"
    quantization.export_int8(folder, validation, num_images=4)
    fp32 = load_predictor(folder)
    int8 = load_predictor(folder, precision="int8")
    equal = pixels = 0
    for path in sorted(validation.iterdir()):
        image = load_image(path, path.name)
        a, b = fp32.predict_mask(image), int8.predict_mask(image)
        equal += int((a == b).sum())
        pixels += a.size
        assert correlation(fp32.averaged_logits(image), int8.averaged_logits(image)) > 0.99
    assert equal / pixels > 0.95


# -- BF16


def test_bf16_runs_or_falls_back_with_a_logged_reason(fcn_dir, fp32, caplog):
    with caplog.at_level(logging.WARNING, logger="gluonseg.inference.precision"):
        bf16 = load_predictor(fcn_dir, precision="bf16")
    image = image_of(40, 64, seed=8)
    if bf16.precision == "bf16":  # this CPU and MXNet build run oneDNN BF16
        assert correlation(bf16.averaged_logits(image), fp32.averaged_logits(image)) > 0.99
        # Native scale: the graph re-specialised to 64x64 (padded) and converted to BF16 at that shape.
        assert correlation(bf16.native_logits(image), fp32.native_logits(image)) > 0.99
        assert bf16.predict_mask(image).shape == (40, 64)
    else:
        assert bf16.precision == "fp32" and "BF16 inference is not supported" in caplog.text
        np.testing.assert_array_equal(bf16.averaged_logits(image), fp32.averaged_logits(image))


def test_bf16_failure_falls_back_to_fp32(fcn_dir, fp32, monkeypatch, caplog):
    from mxnet.contrib import amp

    def unsupported(*args, **kwargs):
        raise mx.base.MXNetError("bfloat16 is not supported on this CPU")

    monkeypatch.setattr(amp, "convert_hybrid_block", unsupported)
    with caplog.at_level(logging.WARNING, logger="gluonseg.inference.precision"):
        predictor = load_predictor(fcn_dir, precision="bf16")
    assert predictor.precision == "fp32"
    assert "BF16 inference is not supported here (bfloat16 is not supported on this CPU)" in caplog.text
    image = image_of(40, 64, seed=9)
    np.testing.assert_array_equal(predictor.averaged_logits(image), fp32.averaged_logits(image))


def test_unsupported_reason():
    assert quantization.unsupported_reason(mx.cpu()) is None  # this MXNet has oneDNN
    assert "CPU only" in quantization.unsupported_reason(mx.gpu(0))


# -- the server setting


def test_precision_setting_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GLUONSEG_PRECISION", raising=False)
    monkeypatch.delenv("GLUONSEG_CALIBRATION_DIR", raising=False)
    settings = ServerSettings.from_env()
    assert settings.precision is None and settings.calibration_dir is None  # unset: serving_choice decides
    monkeypatch.setenv("GLUONSEG_PRECISION", " INT8")
    monkeypatch.setenv("GLUONSEG_CALIBRATION_DIR", str(tmp_path))
    settings = ServerSettings.from_env()
    assert settings.precision == "int8" and settings.calibration_dir == tmp_path
    monkeypatch.setenv("GLUONSEG_PRECISION", "int4")
    with pytest.raises(ClientError, match="GLUONSEG_PRECISION must be one of fp32, int8, bf16, got 'int4'"):
        ServerSettings.from_env()


def test_server_setting_selects_the_precision(fcn_dir, calibration_dir):
    base = ServerSettings(model_dir=fcn_dir)
    settings = replace(base, precision="int8", calibration_dir=calibration_dir)
    handler = SegmentationHandler()
    client = create_app(settings, handler).test_client()
    assert handler.predictor.precision == "int8"
    body = io.BytesIO()
    Image.fromarray(image_of(30, 40, seed=12)).save(body, format="JPEG")
    response = client.post("/invocations", data=body.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and response.content_type == "image/png"
    assert Image.open(io.BytesIO(response.data)).size == (40, 30)
    # int8 with nowhere to get ranges from: the worker stays up and /ping says the model is not loaded.
    handler = SegmentationHandler()
    client = create_app(replace(base, precision="int8"), handler).test_client()
    assert not handler.initialized and client.get("/ping").status_code == 503
