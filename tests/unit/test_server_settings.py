"""Server settings from SageMaker's environment, and the Flask layer with a stub-free handler."""

import io

import numpy as np
import pytest
from PIL import Image

from gluonseg.errors import ClientError
from gluonseg.inference.choices import serving_choice
from gluonseg.util import available_cpus as cpu_count
from serve.app import create_app
from serve.handler import SegmentationHandler
from serve.settings import ServerSettings

ENV_NAMES = [
    "SAGEMAKER_BASE_DIR",
    "GLUONSEG_MODEL_DIR",
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "MODEL_SERVER_WORKERS",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "MODEL_SERVER_TIMEOUT",
    "SAGEMAKER_BIND_TO_PORT",
    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "SAGEMAKER_BATCH",
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
    "GLUONSEG_MAX_QUEUE",
    "GLUONSEG_BACKEND",
    "GLUONSEG_PRECISION",
    "GLUONSEG_AUTO_BUDGET_S",
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    import serve.capacity

    # The worker count's memory side has its own tests; here a machine with room for a worker per core.
    clean_env.setattr(serve.capacity, "memory_available_bytes", lambda *args: 64 << 30)
    s = ServerSettings.from_env()
    assert str(s.model_dir) == "/opt/ml/model" and s.port == 8080 and s.timeout_s == 60
    assert s.workers == cpu_count() and s.threads_per_worker * s.workers <= max(cpu_count(), s.workers)
    assert s.default_accept == "image/png" and s.max_payload_mb == 6 and not s.batch


def test_sagemaker_variables_and_aliases(clean_env, tmp_path):
    clean_env.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    clean_env.setenv("MODEL_SERVER_WORKERS", "3")
    clean_env.setenv("MODEL_SERVER_TIMEOUT", "120")
    clean_env.setenv("SAGEMAKER_BIND_TO_PORT", "9090")
    clean_env.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/x-protobuf")
    s = ServerSettings.from_env()
    assert s.model_dir == tmp_path / "model" and s.workers == 3 and s.timeout_s == 120 and s.port == 9090
    assert s.threads_per_worker == max(1, cpu_count() // 3)
    assert s.default_accept == "application/x-protobuf"
    clean_env.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    clean_env.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "30")
    s = ServerSettings.from_env()
    assert s.workers == 1 and s.timeout_s == 30 and s.threads_per_worker == cpu_count()


def test_batch_mode_allows_larger_payloads_up_to_100(clean_env):
    clean_env.setenv("SAGEMAKER_BATCH", "True")
    clean_env.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "50")
    s = ServerSettings.from_env()
    assert s.batch and s.max_payload_mb == 50 and s.max_payload_bytes == 50 * 1024 * 1024
    clean_env.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "500")
    assert ServerSettings.from_env().max_payload_mb == 100
    clean_env.setenv("SAGEMAKER_BATCH", "TRUE")
    assert ServerSettings.from_env().batch


def test_batch_transform_queue_holds_what_max_concurrent_transforms_sends(clean_env):
    clean_env.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "2")
    clean_env.setenv("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "16")
    assert ServerSettings.from_env().queue_limit == 8  # not batch: the variable is batch transform's, ignored
    clean_env.setenv("SAGEMAKER_BATCH", "true")
    s = ServerSettings.from_env()
    assert s.max_concurrent_transforms == 16 and s.queue_limit == 14  # 2 running + 14 waiting: none refused
    clean_env.setenv("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "4")
    assert ServerSettings.from_env().queue_limit == 8  # never below the default
    clean_env.setenv("GLUONSEG_MAX_QUEUE", "1")
    assert ServerSettings.from_env().queue_limit == 1  # the operator's bound wins
    clean_env.setenv("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "0")
    with pytest.raises(ClientError, match="SAGEMAKER_MAX_CONCURRENT_TRANSFORMS must be at least 1, got 0"):
        ServerSettings.from_env()


def test_bad_values_are_named(clean_env):
    clean_env.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "many")
    with pytest.raises(ClientError, match="SAGEMAKER_MODEL_SERVER_WORKERS must be an integer"):
        ServerSettings.from_env()


def test_flask_layer_default_accept_override_and_batch_limits(trained_model_dir):
    handler = SegmentationHandler()
    settings = ServerSettings(
        model_dir=trained_model_dir,
        workers=3,
        default_accept="application/x-protobuf",
        max_payload_mb=1,
        batch=True,
        backend="mxnet",  # the Flask layer is under test, not auto's first-load measuring
    )
    client = create_app(settings, handler).test_client()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, "JPEG")
    r = client.post("/invocations", data=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-protobuf"
    r = client.post("/invocations", data=buf.getvalue(), headers={"Content-Type": "image/jpeg", "Accept": "*/*"})
    assert r.headers["Content-Type"] == "application/x-protobuf"
    assert client.get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 3,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": 1,
    }
    r = client.post("/invocations", data=b"x" * (1024 * 1024 + 1), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    assert client.get("/invocations").status_code == 405


def test_internal_faults_are_500_with_a_request_id(trained_model_dir, caplog):
    handler = SegmentationHandler()
    client = create_app(ServerSettings(model_dir=trained_model_dir, backend="mxnet"), handler).test_client()

    def broken(requests):
        raise RuntimeError("boom")

    handler.inference = broken
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG")
    r = client.post("/invocations", data=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 500
    request_id = r.json["error"].split("request id ")[1].rstrip(")")
    assert request_id in caplog.text and "boom" in caplog.text
    assert "boom" not in r.json["error"] and "Traceback" not in r.json["error"]


def test_inference_scale_from_the_environment_reaches_the_predictor(clean_env, trained_model_dir):
    clean_env.delenv("GLUONSEG_INFERENCE_SCALE", raising=False)
    clean_env.delenv("GLUONSEG_NATIVE_MAX_PIXELS", raising=False)
    s = ServerSettings.from_env()
    assert s.scale == "native" and s.native_max_pixels == 1 << 20
    clean_env.setenv("GLUONSEG_INFERENCE_SCALE", " Crop")
    clean_env.setenv("GLUONSEG_NATIVE_MAX_PIXELS", "5000")
    clean_env.setenv("GLUONSEG_MODEL_DIR", str(trained_model_dir))
    clean_env.setenv("GLUONSEG_BACKEND", "mxnet")
    s = ServerSettings.from_env()
    assert s.scale == "crop" and s.native_max_pixels == 5000
    handler = SegmentationHandler()
    create_app(s, handler)
    assert handler.predictor.scale == "crop" and handler.predictor.native_max_pixels == 5000
    clean_env.setenv("GLUONSEG_INFERENCE_SCALE", "whole")
    with pytest.raises(ClientError, match="GLUONSEG_INFERENCE_SCALE must be one of native, crop, slide, got 'whole'"):
        ServerSettings.from_env()
    clean_env.setenv("GLUONSEG_INFERENCE_SCALE", "native")
    clean_env.setenv("GLUONSEG_NATIVE_MAX_PIXELS", "0")
    with pytest.raises(ClientError, match="GLUONSEG_NATIVE_MAX_PIXELS must be at least 1, got 0"):
        ServerSettings.from_env()


def test_serve_flags_override_the_inference_settings_and_leave_the_decode_bound(clean_env, tmp_path):
    from gluonseg.cli import build_parser, inference_options
    from serve.entry import settings_with

    clean_env.delenv("GLUONSEG_MAX_PIXELS", raising=False)
    base = ServerSettings.from_env()
    args = build_parser().parse_args(
        ["serve", "--model-dir", str(tmp_path), "--scale", "crop", "--max-native-pixels", "5000", "--precision", "bf16"]
        + ["--backend", "openvino"]
    )
    s = settings_with(base, model_dir=args.model_dir, **inference_options(args))
    assert (s.scale, s.native_max_pixels, s.precision, s.backend) == ("crop", 5000, "bf16", "openvino")
    assert s.decode_max_pixels == base.decode_max_pixels  # the decompression-bomb bound is another setting
    unset = build_parser().parse_args(["serve", "--model-dir", str(tmp_path)])
    assert settings_with(base, **inference_options(unset)) == base


def test_backend_from_the_environment_is_checked_in_the_master(clean_env):
    assert (ServerSettings.from_env().backend, ServerSettings.from_env().precision) == (None, None)  # not set
    clean_env.setenv("GLUONSEG_BACKEND", " ONNXRuntime ")
    assert ServerSettings.from_env().backend == "onnxruntime"
    clean_env.setenv("GLUONSEG_BACKEND", "tensorrt")
    wording = "GLUONSEG_BACKEND must be one of mxnet, onnxruntime, openvino, auto, got 'tensorrt'"
    with pytest.raises(ClientError, match=wording):
        ServerSettings.from_env()
    clean_env.delenv("GLUONSEG_BACKEND")
    clean_env.setenv("GLUONSEG_PRECISION", "fp16")
    with pytest.raises(ClientError, match="GLUONSEG_PRECISION must be one of fp32, int8, bf16, got 'fp16'"):
        ServerSettings.from_env()
    clean_env.delenv("GLUONSEG_PRECISION")
    for bad, reason in (("soon", "a number of seconds, got 'soon'"), ("-5", "at least 0, got '-5'")):
        clean_env.setenv("GLUONSEG_AUTO_BUDGET_S", bad)
        with pytest.raises(ClientError, match=f"GLUONSEG_AUTO_BUDGET_S must be {reason}"):
            ServerSettings.from_env()


def test_serving_runs_auto_unless_a_backend_or_a_precision_is_set():
    assert serving_choice(None, None) == ("auto", "fp32", "the serving default")
    # A precision alone keeps its old meaning (MXNet at that precision): auto would drop it.
    assert serving_choice(None, "int8")[:2] == ("mxnet", "int8")
    assert serving_choice(None, "fp32")[:2] == ("mxnet", "fp32")
    assert serving_choice("openvino", "bf16") == ("openvino", "bf16", "as asked")
    assert serving_choice(" OpenVINO ", None)[:2] == ("openvino", "fp32")
    assert serving_choice("mxnet", None)[:2] == ("mxnet", "fp32")  # GLUONSEG_BACKEND=mxnet restores the reference
    with pytest.raises(ClientError, match="backend must be one of"):
        serving_choice("tensorrt", None)


def test_the_cli_resolves_serve_and_transform_as_the_server_does(tmp_path):
    from gluonseg.cli import build_parser, inference_options
    from serve.handler import Context

    # serve/transform pass only the flags given; the handler's Context resolves what is unset.
    base = ["transform", "--model-dir", "m", "--input", "i", "--output", "o"]
    context = Context(tmp_path, **inference_options(build_parser().parse_args(base)))
    assert serving_choice(context.backend, context.precision)[:2] == ("auto", "fp32")
    context = Context(tmp_path, **inference_options(build_parser().parse_args([*base, "--precision", "int8"])))
    assert serving_choice(context.backend, context.precision)[:2] == ("mxnet", "int8")


def test_slide_tta_and_bounds_from_the_environment(clean_env):
    from gluonseg.inference.tta import TTA

    for name in ("GLUONSEG_SLIDE_LONG_SIDE", "GLUONSEG_SLIDE_WINDOW", "GLUONSEG_SLIDE_STRIDE", "GLUONSEG_TTA"):
        clean_env.delenv(name, raising=False)
    for name in ("GLUONSEG_MAX_PROBABILITIES_MB", "GLUONSEG_MAX_PIXELS"):
        clean_env.delenv(name, raising=False)
    s = ServerSettings.from_env()
    assert (s.slide_long_side, s.slide_window, s.slide_stride, s.tta) == (None, None, None, TTA())
    assert s.max_probability_bytes == 256 << 20 and s.decode_max_pixels == 36_000_000
    clean_env.setenv("GLUONSEG_INFERENCE_SCALE", "slide")
    clean_env.setenv("GLUONSEG_SLIDE_LONG_SIDE", "4000")
    clean_env.setenv("GLUONSEG_SLIDE_WINDOW", "512")
    clean_env.setenv("GLUONSEG_SLIDE_STRIDE", "400")
    clean_env.setenv("GLUONSEG_TTA", "flip,scales=0.75,1")
    clean_env.setenv("GLUONSEG_MAX_PROBABILITIES_MB", "1024")
    s = ServerSettings.from_env()
    assert (s.scale, s.slide_long_side, s.slide_window, s.slide_stride) == ("slide", 4000, 512, 400)
    assert s.tta == TTA(True, (0.75, 1.0)) and s.max_probability_bytes == 1 << 30
    for name, value, reason in (
        ("GLUONSEG_SLIDE_WINDOW", "500", "GLUONSEG_SLIDE_WINDOW: the slide window must be a multiple of 8"),
        ("GLUONSEG_SLIDE_STRIDE", "600", "GLUONSEG_SLIDE_STRIDE (600) must not be larger than GLUONSEG_SLIDE_WINDOW"),
        ("GLUONSEG_SLIDE_LONG_SIDE", "0", "GLUONSEG_SLIDE_LONG_SIDE must be at least 1, got 0"),
        ("GLUONSEG_TTA", "rotate", "GLUONSEG_TTA must be flip, scales="),
        ("GLUONSEG_MAX_PROBABILITIES_MB", "lots", "GLUONSEG_MAX_PROBABILITIES_MB must be an integer"),
    ):
        with clean_env.context() as env:
            env.setenv(name, value)
            with pytest.raises(ClientError, match=reason.replace("(", r"\(").replace(")", r"\)")):
                ServerSettings.from_env()


def test_batch_transform_raises_the_decode_bound_with_its_payload_limit(clean_env):
    clean_env.delenv("GLUONSEG_MAX_PIXELS", raising=False)
    clean_env.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "100")
    assert ServerSettings.from_env().decode_max_pixels == 36_000_000  # a real-time endpoint: unchanged
    clean_env.setenv("SAGEMAKER_BATCH", "true")
    assert ServerSettings.from_env().decode_max_pixels == 200_000_000  # 6 MP per MB, capped at 200 MP
    clean_env.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "10")
    assert ServerSettings.from_env().decode_max_pixels == 60_000_000
    clean_env.setenv("GLUONSEG_MAX_PIXELS", "300000000")
    assert ServerSettings.from_env().decode_max_pixels == 300_000_000  # the operator's value wins
