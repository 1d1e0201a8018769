"""gunicorn, configured for gluonseg: sync workers, one request at a time each, model loaded per worker.

Each worker builds the app after the fork (no preload): MXNet is imported and the model loaded once
per worker, before that worker accepts connections, with its OpenMP pool sized so that
workers x threads = cores. Behind nginx (serve/proxy.py) the workers listen on a unix socket and see
only whole requests; a loaded worker records itself in the readiness flag that nginx's /ping reads,
and the master forgets it when it exits. Alone (--no-proxy) they listen on TCP as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from gluonseg.logging_setup import configure_logging
from serve.readiness import Readiness
from serve.settings import ServerSettings

log = logging.getLogger("gluonseg.serve")

# gunicorn kills a sync worker that is silent for `timeout` s. Behind nginx the caller already got its
# 504 at SAGEMAKER_MODEL_SERVER_TIMEOUT; the worker gets this much longer to finish the abandoned
# request before it is presumed stuck, so a slow request never costs a worker and a model reload.
STUCK_MARGIN_S = 30


M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2
ONEDNN_PRIMITIVES = 64


def prepare_worker_process(threads: int) -> None:
    """Settings a long-lived inference process needs before it imports MXNet (read once, at load).

    OpenMP threads so that workers x threads = cores. Then memory on pictures of many sizes
    (BENCHMARKS.md, "Worker memory"): oneDNN's primitive cache (1,024 by default) held JIT kernels for
    every shape ever seen, and each OpenMP thread got its own malloc arena that kept freed memory;
    together about 110 MB of a worker's plateau. Measured neither slower nor faster.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MXNET_CPU_WORKER_NTHREADS"] = "1"
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(ONEDNN_PRIMITIVES))
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):  # not glibc
        pass


class GunicornServer(BaseApplication):
    def __init__(self, settings: ServerSettings, bind: str, runtime: Path | None = None):
        """bind: "unix:PATH" behind nginx, "HOST:PORT" alone; runtime: the readiness folder (behind nginx)."""
        self.settings = settings
        self.bind = bind
        self.readiness = Readiness(runtime) if runtime is not None else None
        super().__init__()

    def load_config(self) -> None:
        threads = self.settings.threads_per_worker
        readiness = self.readiness

        def post_fork(server: Any, worker: Any) -> None:
            prepare_worker_process(threads)
            configure_logging()

        def post_worker_init(worker: Any) -> None:
            if readiness is not None and worker.wsgi.config.get("GLUONSEG_MODEL_LOADED"):
                readiness.mark_ready(os.getpid())

        def child_exit(server: Any, worker: Any) -> None:
            if readiness is not None:
                readiness.forget(worker.pid)

        def on_exit(server: Any) -> None:
            if readiness is not None:
                readiness.clear()

        def worker_exit(server: Any, worker: Any) -> None:
            # A worker stopped on purpose (SIGTERM, max requests) has answered all it held: it leaves without
            # the interpreter's teardown, where a native runtime's thread pool was seen to hang a worker for
            # the whole graceful timeout (a `docker stop` then ended in SIGKILL, exit 137). A worker that
            # failed (a boot error, alive still set) exits normally, so gunicorn sees its exit code.
            if not worker.alive:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os._exit(0)

        proxied = self.readiness is not None
        config = {
            "bind": self.bind,
            "workers": self.settings.workers,
            "worker_class": "sync",
            "timeout": self.settings.timeout_s + (STUCK_MARGIN_S if proxied else 0),
            "graceful_timeout": self.settings.drain_timeout_s,
            "keepalive": 75,
            "backlog": 2048,
            "preload_app": False,
            "post_fork": post_fork,
            "post_worker_init": post_worker_init,
            "child_exit": child_exit,
            "on_exit": on_exit,
            "worker_exit": worker_exit,
            "accesslog": None if proxied else "-",  # behind nginx, nginx logs each request
            "errorlog": "-",
            "loglevel": "info",
            "limit_request_line": 8190,
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from serve.app import create_app

        return create_app(self.settings)
