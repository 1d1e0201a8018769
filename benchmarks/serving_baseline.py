"""Variant (a) through a server: stock GluonCV as a user serves it, a minimal Flask app under gunicorn."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.common.server import AppServer
from benchmarks.serving_variants import Stock

if TYPE_CHECKING:
    from flask import Flask


def baseline_app() -> Flask:
    """gunicorn's app factory for (a): what a user serving stock GluonCV writes (model from BENCH_MODEL_DIR)."""
    from flask import Flask, Response, request

    stock = Stock(Path(os.environ["BENCH_MODEL_DIR"]))
    app = Flask("stock-gluoncv")

    @app.get("/ping")
    def ping() -> Response:
        return Response(status=200)

    @app.post("/invocations")
    def invocations() -> Response:
        import mxnet as mx
        from gluoncv.data.transforms.presets.segmentation import test_transform
        from gluoncv.utils.viz import get_color_pallete

        img = mx.image.imdecode(request.get_data())
        output = stock.net.predict(test_transform(img, mx.cpu()))
        mask = mx.nd.squeeze(mx.nd.argmax(output, 1)).asnumpy()
        buffer = io.BytesIO()
        get_color_pallete(mask, "pascal_voc").save(buffer, format="PNG")
        return Response(buffer.getvalue(), content_type="image/png")

    return app


def start_baseline(model_dir: Path, workers: int, log_dir: Path) -> AppServer:
    """Stock GluonCV behind gunicorn with our server's worker layout (workers x 1 thread, OMP 1)."""
    app = AppServer(
        "benchmarks.serving_baseline:baseline_app()", workers, log_dir, "baseline", BENCH_MODEL_DIR=str(model_dir)
    )
    return app.start()
