"""`serve`: what SageMaker runs as `docker run IMAGE serve`. Starts gunicorn with the Flask app.

Each worker builds the app after the fork (no preload): MXNet is imported and the model loaded once
per worker, before that worker accepts connections, with its OpenMP pool sized so that
workers x threads = cores. SIGTERM makes gunicorn stop accepting, finish in-flight requests
(up to the graceful timeout) and exit.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import Any

from gunicorn.app.base import BaseApplication

from gluonseg.errors import GluonsegError
from gluonseg.logging_setup import configure_logging
from serve.settings import ServerSettings

log = logging.getLogger("gluonseg.serve")


class GunicornServer(BaseApplication):
    def __init__(self, settings: ServerSettings, host: str = "0.0.0.0"):
        self.settings = settings
        self.host = host
        super().__init__()

    def load_config(self) -> None:
        threads = self.settings.threads_per_worker

        def post_fork(server, worker) -> None:
            # Before the worker imports MXNet: its OpenMP pool reads these once, at load time.
            os.environ["OMP_NUM_THREADS"] = str(threads)
            os.environ["MXNET_CPU_WORKER_NTHREADS"] = "1"
            configure_logging()

        config = {
            "bind": f"{self.host}:{self.settings.port}",
            "workers": self.settings.workers,
            "worker_class": "sync",
            "timeout": self.settings.timeout_s,
            "graceful_timeout": 25,  # SageMaker sends SIGKILL 30 s after SIGTERM
            "keepalive": 75,
            "preload_app": False,
            "post_fork": post_fork,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "limit_request_line": 8190,
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self):
        from serve.app import create_app

        return create_app(self.settings)


def run(settings: ServerSettings, host: str | None = None) -> None:
    host = host or os.environ.get("GLUONSEG_BIND_HOST", "0.0.0.0")
    log.info(
        "serving %s on %s:%d with %d worker(s) x %d thread(s)",
        settings.model_dir,
        host,
        settings.port,
        settings.workers,
        settings.threads_per_worker,
    )
    GunicornServer(settings, host).run()


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        settings = ServerSettings.from_env()
    except GluonsegError as exc:
        print(exc.failure_text(), file=sys.stderr)
        return 2
    run(settings)
    return 0


def settings_with(
    settings: ServerSettings, model_dir=None, port=None, workers=None, **inference: Any
) -> ServerSettings:
    """CLI overrides (`gluonseg serve --model-dir M --port P --workers N [--precision ..] [--scale ..]`).

    `inference`: ServerSettings fields (precision, calibration_dir, scale, native_max_pixels) to override.
    """
    from serve.settings import cpu_count

    changes: dict[str, Any] = dict(inference)
    if model_dir is not None:
        changes["model_dir"] = model_dir
    if port is not None:
        changes["port"] = port
    if workers is not None:
        changes["workers"] = workers
        changes["threads_per_worker"] = max(1, cpu_count() // workers)
    return replace(settings, **changes)


if __name__ == "__main__":
    sys.exit(main())
