"""The model handler, in TorchServe's life cycle: initialize, preprocess, inference, postprocess, handle.

No HTTP here: the Flask layer (serve/app.py) and batch transform (gluonseg transform) both call
`handle`. Decoding, predicting and encoding are separate modules (gluonseg.codecs, gluonseg.inference);
this class only wires them in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gluonseg.codecs.content_types import PNG, PROTOBUF, RECORDIO_PROTOBUF, check_request_type, choose_accept
from gluonseg.codecs.decode import DEFAULT_DECODE_MAX_PIXELS, decode_image
from gluonseg.codecs.encode import encode_response
from gluonseg.inference.choices import serving_choice
from gluonseg.inference.geometry import NATIVE_MAX_PIXELS  # numpy and PIL only: no MXNet before the fork
from gluonseg.inference.postprocess import DEFAULT_MAX_PROBABILITY_BYTES
from gluonseg.inference.tta import NO_TTA, TTA

log = logging.getLogger("gluonseg.serve")

LARGE_PICTURE_PIXELS = 4_000_000  # pictures from this size up get a log line of their own (time, windows)


@dataclass
class Context:
    """What TorchServe passes as `context`: where the model is, and per-request headers."""

    model_dir: Path
    default_accept: str = PNG
    decode_max_pixels: int = DEFAULT_DECODE_MAX_PIXELS  # the decode bound: larger images are refused
    # What runs the network, as the operator set it (None: not set; see gluonseg.inference.choices.serving_choice).
    backend: str | None = None
    precision: str | None = None  # the network's precision; calibration_dir: where INT8 calibration images are
    calibration_dir: Path | None = None
    scale: str = "native"  # gluonseg.inference.geometry: own size, short side = crop_size, or slide windows
    native_max_pixels: int = NATIVE_MAX_PIXELS  # the native-scale bound: larger images are scaled down
    slide_long_side: int | None = None  # the slide scale's resolution, window and stride (gluonseg.inference.windows)
    slide_window: int | None = None
    slide_stride: int | None = None
    tta: TTA = NO_TTA  # test-time augmentation (gluonseg.inference.tta)
    max_probability_bytes: int = DEFAULT_MAX_PROBABILITY_BYTES  # larger probabilities are refused (413)
    request_headers: list[dict[str, str]] = field(default_factory=list)
    # Called as a picture's network windows finish, (done, total): `gluonseg transform`'s bar per large picture.
    progress: Callable[[int, int], None] | None = None

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir)}

    def get_request_header(self, index: int, name: str) -> str | None:
        headers = self.request_headers[index] if index < len(self.request_headers) else {}
        for key, value in headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class DecodedRequest:
    image: Any
    accept: str


class SegmentationHandler:
    """One per worker process; `initialize` loads the model once, before any request is taken."""

    def __init__(self) -> None:
        self.initialized = False
        self.predictor = None
        self.context: Context | None = None
        self.load_seconds = 0.0

    def initialize(self, context: Context) -> None:
        from gluonseg.inference.loading import load_predictor  # MXNet is imported here, in the worker, after the fork

        start = time.perf_counter()
        self.context = context
        backend, precision, why = serving_choice(context.backend, context.precision)
        log.info("backend %s, precision %s (%s)", backend, precision, why)
        self.predictor = load_predictor(
            Path(context.system_properties["model_dir"]),
            backend=backend,
            precision=precision,
            calibration_dir=context.calibration_dir,
            scale=context.scale,
            native_max_pixels=context.native_max_pixels,
            slide_long_side=context.slide_long_side,
            slide_window=context.slide_window,
            slide_stride=context.slide_stride,
            tta=context.tta,
            max_probability_bytes=context.max_probability_bytes,
        )
        self.load_seconds = time.perf_counter() - start
        self.initialized = True
        log.info(
            "model loaded from %s in %.1f s (%d classes, %s %s, %s scale), TTA %s",
            context.model_dir,
            self.load_seconds,
            self.predictor.num_classes,
            self.predictor.backend,
            self.predictor.precision,
            self.predictor.scale,
            self.predictor.tta,
        )

    def preprocess(self, data: list[dict[str, Any]]) -> list[DecodedRequest]:
        """Check the media types first (cheap refusals), then decode the images."""
        assert self.context is not None
        requests = []
        for index, item in enumerate(data):
            content_type = self.context.get_request_header(index, "Content-Type")
            media = check_request_type(content_type)
            accept = choose_accept(self.context.get_request_header(index, "Accept"), self.context.default_accept)
            image = decode_image(item.get("body") or b"", media, decode_max_pixels=self.context.decode_max_pixels)
            requests.append(DecodedRequest(image, accept))
        return requests

    def inference(self, requests: list[DecodedRequest]) -> list[tuple[Any, str]]:
        assert self.predictor is not None and self.context is not None
        outputs = []
        for request in requests:
            want_probabilities = request.accept in (RECORDIO_PROTOBUF, PROTOBUF)
            start = time.perf_counter()
            prediction = self.predictor.predict(
                request.image, want_probabilities=want_probabilities, progress=self.context.progress
            )
            height, width = request.image.shape[:2]
            if height * width >= LARGE_PICTURE_PIXELS:
                seconds = time.perf_counter() - start
                log.info(
                    "%dx%d picture (%.1f MP) at %s scale, TTA %s: %d windows in %.1f s (%.1f windows/s)",
                    width,
                    height,
                    height * width / 1e6,
                    self.predictor.scale,
                    self.predictor.tta,
                    prediction.windows,
                    seconds,
                    prediction.windows / max(seconds, 1e-9),
                )
            outputs.append((prediction, request.accept))
        return outputs

    def postprocess(self, outputs: list[tuple[Any, str]]) -> list[tuple[bytes, str]]:
        assert self.predictor is not None
        return [
            encode_response(accept, prediction.probabilities, prediction.mask, self.predictor.palette)
            for prediction, accept in outputs
        ]

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[tuple[bytes, str]]:
        if not self.initialized:
            self.initialize(context)
        self.context = context
        return self.postprocess(self.inference(self.preprocess(data)))
