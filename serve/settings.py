"""Server settings from the environment SageMaker (and its inference toolkit) sets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gluonseg.codecs.decode import DEFAULT_DECODE_MAX_PIXELS  # a JPEG under 6 MB can declare far more
from gluonseg.errors import ClientError
from gluonseg.inference.choices import check_backend, check_precision, measure_budget  # no MXNet here
from gluonseg.inference.geometry import NATIVE_MAX_PIXELS, SCALES  # numpy and PIL only: no MXNet here
from gluonseg.inference.postprocess import DEFAULT_MAX_PROBABILITY_BYTES
from gluonseg.inference.tta import NO_TTA, TTA, parse_tta
from gluonseg.inference.windows import check_window
from gluonseg.util import available_cpus
from serve.capacity import default_workers

DEFAULT_PORT = 8080
DEFAULT_TIMEOUT_S = 60
DEFAULT_MAX_PAYLOAD_MB = 6
MAX_BATCH_PAYLOAD_MB = 100  # SageMaker's ceiling for MaxPayloadInMB
# Batch transform's decode bound grows with its payload limit (36 MP at the 6 MB default) up to 200 MP:
# large pictures are what batch transform is for, and the slide scale segments them in bounded memory.
PIXELS_PER_PAYLOAD_MB = DEFAULT_DECODE_MAX_PIXELS // DEFAULT_MAX_PAYLOAD_MB
LARGE_DECODE_MAX_PIXELS = 200_000_000
# The nginx front (serve/nginx.conf.template). Timeouts in seconds; README "Serving stack" says why each.
DEFAULT_QUEUE_PER_WORKER = 4  # waiting requests per worker: ~4 requests' time stays well inside 60 s
DEFAULT_CLIENT_HEADER_TIMEOUT_S = 10  # the whole header
DEFAULT_CLIENT_BODY_TIMEOUT_S = 10  # between two reads of the body
DEFAULT_SEND_TIMEOUT_S = 30  # between two writes of the answer
DEFAULT_KEEPALIVE_TIMEOUT_S = 75  # longer than a load balancer's 60 s idle timeout
DEFAULT_DRAIN_TIMEOUT_S = 25  # SIGTERM: in-flight requests get this long; SageMaker kills at 30 s


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return None


def _int(value: str | None, name: str, default: int, low: int = 1) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ClientError(f"{name} must be an integer, got {value!r}") from None
    if number < low:
        raise ClientError(f"{name} must be at least {low}, got {number}")
    return number


def _seconds(name: str, default: int) -> int:
    return _int(_env(name), name, default)


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ClientError(f"{name} must be true or false, got {value!r}")


def _precision(value: str | None) -> str | None:
    return None if value is None else check_precision(value, "GLUONSEG_PRECISION")


def _backend(value: str | None) -> str | None:
    return None if value is None else check_backend(value, "GLUONSEG_BACKEND")


def _scale(value: str | None) -> str:
    scale = (value or SCALES[0]).strip().lower()
    if scale not in SCALES:
        raise ClientError(f"GLUONSEG_INFERENCE_SCALE must be one of {', '.join(SCALES)}, got {value!r}")
    return scale


def default_decode_max_pixels(batch: bool, payload_mb: int) -> int:
    """The decode bound when GLUONSEG_MAX_PIXELS is not set: 36 MP, or for batch transform 6 MP per MB of
    payload limit (at least 36 MP, at most LARGE_DECODE_MAX_PIXELS)."""
    if not batch:
        return DEFAULT_DECODE_MAX_PIXELS
    return min(LARGE_DECODE_MAX_PIXELS, max(DEFAULT_DECODE_MAX_PIXELS, payload_mb * PIXELS_PER_PAYLOAD_MB))


def slide_options(long_side: str | None, window: str | None, stride: str | None, names: tuple[str, str, str]):
    """(slide_long_side, slide_window, slide_stride) as ints (None: not set), checked; ClientError naming the
    setting (`names`: the three settings' names as the user gave them)."""
    values = tuple(None if v is None else _int(v, name, 0) for v, name in zip((long_side, window, stride), names))
    long_value, window_value, stride_value = values
    if window_value is not None:
        try:
            check_window(window_value)
        except ValueError as exc:
            raise ClientError(f"{names[1]}: {exc}") from None
    if stride_value is not None and window_value is not None and stride_value > window_value:
        raise ClientError(f"{names[2]} ({stride_value}) must not be larger than {names[1]} ({window_value})")
    return long_value, window_value, stride_value


def probability_bytes(value: str | None, name: str = "GLUONSEG_MAX_PROBABILITIES_MB") -> int:
    """The probabilities bound in bytes from a number of MB (None: the default)."""
    if value is None:
        return DEFAULT_MAX_PROBABILITY_BYTES
    return _int(value, name, 1) << 20


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path
    port: int = DEFAULT_PORT
    workers: int = 1
    threads_per_worker: int = 1
    timeout_s: int = DEFAULT_TIMEOUT_S
    default_accept: str = "image/png"
    max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB
    decode_max_pixels: int = DEFAULT_DECODE_MAX_PIXELS  # GLUONSEG_MAX_PIXELS: larger images are refused
    batch: bool = False
    # GLUONSEG_BACKEND: mxnet | onnxruntime | openvino | auto; GLUONSEG_PRECISION: fp32 | int8 | bf16. None: not
    # set, and the handler applies gluonseg.inference.choices.serving_choice (auto; MXNet if only a precision is set).
    backend: str | None = None
    precision: str | None = None
    calibration_dir: Path | None = None  # GLUONSEG_CALIBRATION_DIR: images to calibrate INT8 at load
    scale: str = SCALES[0]  # GLUONSEG_INFERENCE_SCALE: native | crop | slide (gluonseg.inference.geometry)
    native_max_pixels: int = NATIVE_MAX_PIXELS  # GLUONSEG_NATIVE_MAX_PIXELS: larger pictures are scaled down
    # GLUONSEG_SLIDE_LONG_SIDE / _WINDOW / _STRIDE (gluonseg.inference.windows); None: own size, crop_size, 2/3
    slide_long_side: int | None = None
    slide_window: int | None = None
    slide_stride: int | None = None
    tta: TTA = NO_TTA  # GLUONSEG_TTA: flip, scales=... (gluonseg.inference.tta)
    max_probability_bytes: int = DEFAULT_MAX_PROBABILITY_BYTES  # GLUONSEG_MAX_PROBABILITIES_MB
    proxy: bool = True  # nginx in front (GLUONSEG_NO_PROXY=true or --no-proxy: gunicorn alone, for debugging)
    max_queue: int | None = None  # GLUONSEG_MAX_QUEUE: requests waiting for a worker; None: 4 per worker
    # SAGEMAKER_MAX_CONCURRENT_TRANSFORMS (batch transform, set only when the job sets it): requests the platform
    # sends at once, which the queue then always holds (a 503 would fail the record).
    max_concurrent_transforms: int | None = None
    client_header_timeout_s: int = DEFAULT_CLIENT_HEADER_TIMEOUT_S  # GLUONSEG_CLIENT_HEADER_TIMEOUT
    client_body_timeout_s: int = DEFAULT_CLIENT_BODY_TIMEOUT_S  # GLUONSEG_CLIENT_BODY_TIMEOUT
    send_timeout_s: int = DEFAULT_SEND_TIMEOUT_S  # GLUONSEG_SEND_TIMEOUT
    keepalive_timeout_s: int = DEFAULT_KEEPALIVE_TIMEOUT_S  # GLUONSEG_KEEPALIVE_TIMEOUT
    drain_timeout_s: int = DEFAULT_DRAIN_TIMEOUT_S  # GLUONSEG_DRAIN_TIMEOUT
    runtime_dir: Path | None = None  # GLUONSEG_RUNTIME_DIR: nginx config, socket, flags (default: a new temp dir)
    workers_note: str = ""  # how the worker count was chosen, for the start-up log
    workers_asked: bool = False  # the count came from SAGEMAKER_MODEL_SERVER_WORKERS (or --workers)
    page: bool = True  # GLUONSEG_PAGE: GET / answers the page to try the model (serve/page.py)

    @property
    def queue_limit(self) -> int:
        if self.max_queue is not None:
            return self.max_queue
        default = DEFAULT_QUEUE_PER_WORKER * self.workers
        if self.batch and self.max_concurrent_transforms is not None:
            return max(default, self.max_concurrent_transforms - self.workers)
        return default

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @classmethod
    def from_env(cls) -> ServerSettings:
        base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
        model_dir = Path(_env("GLUONSEG_MODEL_DIR") or base / "model")
        cores = available_cpus()
        native_max_pixels = _int(_env("GLUONSEG_NATIVE_MAX_PIXELS"), "GLUONSEG_NATIVE_MAX_PIXELS", NATIVE_MAX_PIXELS)
        asked = _env("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS")
        if asked is not None:
            workers = _int(asked, "SAGEMAKER_MODEL_SERVER_WORKERS", 1)
            note = f"{workers} worker(s), as SAGEMAKER_MODEL_SERVER_WORKERS asks"
        else:
            # One worker per core (each request is one CPU-bound forward pass; MXNet's OpenMP pool gets
            # cores // workers threads), but never more than the memory holds.
            peak = _int(_env("GLUONSEG_WORKER_MEMORY_MB"), "GLUONSEG_WORKER_MEMORY_MB", 0, low=0)
            workers, note = default_workers(cores, model_dir, native_max_pixels, peak_mb=peak or None)
        measure_budget()  # GLUONSEG_AUTO_BUDGET_S, read by the workers: a bad value stops the start here
        batch = (_env("SAGEMAKER_BATCH") or "false").strip().lower() == "true"
        payload = _int(_env("SAGEMAKER_MAX_PAYLOAD_IN_MB"), "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB)
        payload = min(payload, MAX_BATCH_PAYLOAD_MB)
        slide = slide_options(
            _env("GLUONSEG_SLIDE_LONG_SIDE"),
            _env("GLUONSEG_SLIDE_WINDOW"),
            _env("GLUONSEG_SLIDE_STRIDE"),
            ("GLUONSEG_SLIDE_LONG_SIDE", "GLUONSEG_SLIDE_WINDOW", "GLUONSEG_SLIDE_STRIDE"),
        )
        return cls(
            model_dir=model_dir,
            port=_int(_env("SAGEMAKER_BIND_TO_PORT"), "SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT),
            workers=workers,
            threads_per_worker=max(1, cores // workers),
            timeout_s=_int(
                _env("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"),
                "SAGEMAKER_MODEL_SERVER_TIMEOUT",
                DEFAULT_TIMEOUT_S,
            ),
            default_accept=(_env("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or "image/png").strip().lower(),
            max_payload_mb=payload,
            decode_max_pixels=_int(
                _env("GLUONSEG_MAX_PIXELS"), "GLUONSEG_MAX_PIXELS", default_decode_max_pixels(batch, payload)
            ),
            batch=batch,
            backend=_backend(_env("GLUONSEG_BACKEND")),
            precision=_precision(_env("GLUONSEG_PRECISION")),
            calibration_dir=Path(calibration) if (calibration := _env("GLUONSEG_CALIBRATION_DIR")) else None,
            scale=_scale(_env("GLUONSEG_INFERENCE_SCALE")),
            native_max_pixels=native_max_pixels,
            slide_long_side=slide[0],
            slide_window=slide[1],
            slide_stride=slide[2],
            tta=parse_tta(_env("GLUONSEG_TTA"), "GLUONSEG_TTA"),
            max_probability_bytes=probability_bytes(_env("GLUONSEG_MAX_PROBABILITIES_MB")),
            proxy=not _bool(_env("GLUONSEG_NO_PROXY"), "GLUONSEG_NO_PROXY"),
            max_queue=_int(q, "GLUONSEG_MAX_QUEUE", 0, low=0) if (q := _env("GLUONSEG_MAX_QUEUE")) else None,
            max_concurrent_transforms=(
                _int(c, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", 1)
                if batch and (c := _env("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"))
                else None
            ),
            client_header_timeout_s=_seconds("GLUONSEG_CLIENT_HEADER_TIMEOUT", DEFAULT_CLIENT_HEADER_TIMEOUT_S),
            client_body_timeout_s=_seconds("GLUONSEG_CLIENT_BODY_TIMEOUT", DEFAULT_CLIENT_BODY_TIMEOUT_S),
            send_timeout_s=_seconds("GLUONSEG_SEND_TIMEOUT", DEFAULT_SEND_TIMEOUT_S),
            keepalive_timeout_s=_seconds("GLUONSEG_KEEPALIVE_TIMEOUT", DEFAULT_KEEPALIVE_TIMEOUT_S),
            drain_timeout_s=_seconds("GLUONSEG_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT_S),
            runtime_dir=Path(runtime) if (runtime := _env("GLUONSEG_RUNTIME_DIR")) else None,
            workers_note=note,
            workers_asked=asked is not None,
            page=_bool(_env("GLUONSEG_PAGE") or "true", "GLUONSEG_PAGE"),
        )
