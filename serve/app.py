"""The Flask application factory: maps HTTP to the handler, and nothing else.

Routes: GET /ping, POST /invocations, GET /execution-parameters. Every client mistake is a 4xx with
a JSON `{"error": ...}` (STATUS_OF maps the core's typed request errors to their statuses); anything
else is a 500 with a request id that is also in the log.
"""

from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from gluonseg.errors import NotAcceptable, ProbabilitiesTooLarge, RequestError, RequestTooLarge, UnsupportedContentType
from serve.handler import Context, SegmentationHandler
from serve.page import page_html
from serve.settings import ServerSettings

log = logging.getLogger("gluonseg.serve")

QUEUED_AT_HEADER = "X-Gluonseg-Queued-At"  # set by nginx (serve/nginx.conf.template)

# The HTTP status of each request error the core raises; a subclass not listed takes its base's.
STATUS_OF: dict[type[RequestError], int] = {
    RequestError: 400,
    RequestTooLarge: 413,
    ProbabilitiesTooLarge: 413,
    UnsupportedContentType: 415,
    NotAcceptable: 406,
}


def status_of(exc: RequestError) -> int:
    """The status to answer `exc` with: that of its most specific type in STATUS_OF."""
    return next(STATUS_OF[kind] for kind in type(exc).__mro__ if kind in STATUS_OF)


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _read_body(limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLarge(
            f"request body of {length} bytes is over the limit of {limit} bytes " "(SAGEMAKER_MAX_PAYLOAD_IN_MB)"
        )
    stream = request.stream
    chunks, total = [], 0
    try:
        while True:
            chunk = stream.read(min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise RequestTooLarge(f"request body is over the limit of {limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    except OSError as exc:
        # gunicorn raises IOError subclasses for a malformed chunked body or a client that stops
        # sending mid-body: the client's fault, so a 400 rather than a 500.
        raise RequestError(
            f"the request body could not be read ({type(exc).__name__}); "
            "check its Transfer-Encoding: chunked framing or Content-Length"
        ) from None
    return b"".join(chunks)


def _seconds_in_queue(stamp: str | None) -> float | None:
    """Seconds since nginx handed the request over (its $msec in QUEUED_AT_HEADER), if it says."""
    if not stamp:
        return None
    try:
        return max(0.0, time.time() - float(stamp))
    except ValueError:
        return None


def create_app(settings: ServerSettings | None = None, handler: SegmentationHandler | None = None) -> Flask:
    settings = settings or ServerSettings.from_env()
    app = Flask("gluonseg")
    app.config["MAX_CONTENT_LENGTH"] = None  # we enforce the limit ourselves, with our message
    app.debug = False  # Flask reads FLASK_DEBUG from the environment; a scoring server never runs in debug mode
    context = Context(
        settings.model_dir,
        default_accept=settings.default_accept,
        decode_max_pixels=settings.decode_max_pixels,
        backend=settings.backend,
        precision=settings.precision,
        calibration_dir=settings.calibration_dir,
        scale=settings.scale,
        native_max_pixels=settings.native_max_pixels,
        slide_long_side=settings.slide_long_side,
        slide_window=settings.slide_window,
        slide_stride=settings.slide_stride,
        tta=settings.tta,
        max_probability_bytes=settings.max_probability_bytes,
    )
    handler = handler or SegmentationHandler()
    state = {"load_error": None}
    if not handler.initialized:
        try:
            handler.initialize(context)
        except Exception as exc:  # noqa: BLE001 - /ping reports it; the worker stays up to say why
            state["load_error"] = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load from %s: %s", settings.model_dir, state["load_error"])

    app.config["GLUONSEG_MODEL_LOADED"] = handler.initialized  # serve/workers.py marks the worker ready

    @app.get("/ping")
    def ping() -> Response:
        if handler.initialized:
            return Response(status=200)
        log.error("ping: model not loaded: %s", state["load_error"])
        return _error(503, "model not loaded")

    @app.get("/")
    def page() -> Response:
        if not settings.page:
            return _error(404, "the page is off (GLUONSEG_PAGE=false)")
        if not handler.initialized:
            return _error(503, "model not loaded")
        predictor = handler.predictor
        config = {
            "class_names": predictor.class_names,
            "palette": predictor.palette[: 3 * predictor.num_classes],
            "algorithm": predictor.algorithm,
            "backend": predictor.backend,
            "precision": predictor.precision,
        }
        return Response(page_html(config), status=200, content_type="text/html; charset=utf-8")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return jsonify(
            {
                "MaxConcurrentTransforms": settings.workers,
                "BatchStrategy": "SINGLE_RECORD",
                "MaxPayloadInMB": settings.max_payload_mb,
            }
        )

    @app.post("/invocations")
    def invocations() -> Response:
        if not handler.initialized:
            return _error(503, "model not loaded")
        waited = _seconds_in_queue(request.headers.get(QUEUED_AT_HEADER))
        if waited is not None and waited >= settings.timeout_s:
            # nginx has already answered 504 and closed: running the network would only delay the
            # requests queued behind this one.
            log.warning("skipped a request that waited %.1f s for a worker (timeout %d s)", waited, settings.timeout_s)
            return _error(504, f"the request waited {waited:.1f} s for a worker, over SAGEMAKER_MODEL_SERVER_TIMEOUT")
        body = _read_body(settings.max_payload_bytes)
        context.request_headers = [dict(request.headers)]
        ((payload, content_type),) = handler.handle([{"body": body}], context)
        return Response(payload, status=200, content_type=content_type)

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError) -> Response:
        return _error(status_of(exc), str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 400, exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        request_id = uuid.uuid4().hex[:12]
        log.exception("request %s failed", request_id)
        return _error(500, f"internal error (request id {request_id})")

    return app
