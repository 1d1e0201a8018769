"""`serve`: what SageMaker runs as `docker run IMAGE serve`. nginx in front of gunicorn, or gunicorn alone.

    client -> nginx (SAGEMAKER_BIND_TO_PORT) -> unix socket -> gunicorn sync workers -> Flask app -> handler

This process supervises the two: it starts gunicorn's master (a forked child) and nginx, each in its
own process group and bound to die with this process (PR_SET_PDEATHSIG), then waits. SIGTERM or
SIGINT is a graceful stop: nginx stops accepting and lets in-flight requests finish (up to
GLUONSEG_DRAIN_TIMEOUT), then gunicorn finishes what it holds and exits; `serve` exits 0. If either
child dies on its own, the other is stopped and `serve` exits 1, so the platform restarts the
container instead of leaving half a server. What each child replaces by itself: nginx's master a dead
nginx worker, gunicorn's master a dead worker; a stopped worker is caught here (serve/worker_watch.py).
README "When a process dies" has what each fault does and how long it takes.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gluonseg.errors import GluonsegError
from gluonseg.logging_setup import configure_logging
from gluonseg.util import available_cpus
from serve import proxy
from serve.capacity import default_workers
from serve.readiness import Readiness
from serve.settings import ServerSettings
from serve.worker_watch import WorkerWatch, child_pids

log = logging.getLogger("gluonseg.serve")

PR_SET_PDEATHSIG = 1
POLL_S = 0.2
STOP_MIN_S = 2.0  # gunicorn's least time to stop once nginx has drained (its workers hold no request then)


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Own process group (the terminal's Ctrl-C reaches only the supervisor, which orders the stop),
    and `sig` when the supervisor dies, even by SIGKILL, so no orphan keeps the port."""
    os.setpgrp()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _run_gunicorn(settings: ServerSettings, bind: str, runtime: Path | None) -> None:
    from serve.workers import GunicornServer

    _die_with_parent()
    configure_logging()
    GunicornServer(settings, bind, runtime).run()


def _kill_group(pgid: int) -> None:
    """SIGKILL a child's process group (each child leads its own, see _die_with_parent)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    """nginx + gunicorn started together, stopped together."""

    def __init__(self, settings: ServerSettings, host: str) -> None:
        self.settings = settings
        self.host = host
        self.nginx_bin = proxy.find_nginx()
        self.runtime = proxy.runtime_dir(settings)
        self.config = proxy.render(settings, self.runtime, host)
        proxy.check_config(self.nginx_bin, self.config)
        readiness = Readiness(self.runtime)
        readiness.clear()
        self.watch = WorkerWatch(readiness)
        self.stop_requested = False
        self.gunicorn: Any = None
        self.nginx: subprocess.Popen | None = None

    def _request_stop(self, signum: int, frame: Any) -> None:
        log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        self.stop_requested = True

    def start(self) -> None:
        bind = f"unix:{proxy.socket_path(self.runtime)}"
        context = multiprocessing.get_context("fork")
        self.gunicorn = context.Process(
            target=_run_gunicorn, args=(self.settings, bind, self.runtime), name="gunicorn", daemon=False
        )
        self.gunicorn.start()
        (self.runtime / "gunicorn.pid").write_text(f"{self.gunicorn.pid}\n")
        self.nginx = subprocess.Popen(
            proxy.nginx_command(self.nginx_bin, self.config),
            preexec_fn=lambda: _die_with_parent(signal.SIGTERM),
        )

    def wait(self) -> int:
        """Block until a stop signal (returns 0 after a clean stop) or a child's death (returns 1)."""
        assert self.nginx is not None and self.gunicorn is not None
        while not self.stop_requested:
            if self.nginx.poll() is not None:
                log.error("nginx exited with %s; stopping gunicorn", self.nginx.returncode)
                self._stop_gunicorn()
                return 1
            if not self.gunicorn.is_alive():
                log.error("gunicorn exited with %s; stopping nginx", self.gunicorn.exitcode)
                self._stop_nginx(signal.SIGTERM)
                return 1
            self.watch.check(child_pids(self.gunicorn.pid))  # a stopped worker: not ready, then replaced
            time.sleep(POLL_S)
        # nginx first: it stops accepting at once and waits for the requests it holds, which the
        # workers are still there to finish; then the workers go, with what is left of the same budget
        # (nothing is in flight any more): the whole stop ends inside SageMaker's 30 s before SIGKILL.
        deadline = time.monotonic() + self.settings.drain_timeout_s + 3
        nginx_code = self._stop_nginx(signal.SIGQUIT)
        gunicorn_code = self._stop_gunicorn(max(STOP_MIN_S, deadline - time.monotonic()))
        log.info("stopped (nginx %s, gunicorn %s)", nginx_code, gunicorn_code)
        return 0 if nginx_code == 0 and gunicorn_code == 0 else 1

    def _stop_nginx(self, sig: int) -> int | None:
        assert self.nginx is not None
        if self.nginx.poll() is None:
            self.nginx.send_signal(sig)
            try:
                self.nginx.wait(self.settings.drain_timeout_s + 3)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        return self.nginx.returncode

    def _stop_gunicorn(self, grace_s: float | None = None) -> int | None:
        if self.gunicorn.is_alive():
            os.kill(self.gunicorn.pid, signal.SIGTERM)
            self.gunicorn.join(self.settings.drain_timeout_s + 3 if grace_s is None else grace_s)
            if self.gunicorn.is_alive():
                log.warning("gunicorn did not stop in time: killing it and its workers")
                _kill_group(self.gunicorn.pid)
                self.gunicorn.join()
        return self.gunicorn.exitcode

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            return self.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # Whatever happened, nothing of ours outlives `serve`: an nginx worker whose master was
            # killed keeps serving the port, and a busy gunicorn worker notices its master's death late.
            for child in (self.nginx, self.gunicorn):
                if child is not None:
                    _kill_group(child.pid)
            if self.nginx is not None:
                self.nginx.wait()
            if self.gunicorn is not None:
                self.gunicorn.join()
            if self.settings.runtime_dir is None:  # a temp folder of our own: socket, config, nginx's temp files
                shutil.rmtree(self.runtime, ignore_errors=True)


def run(settings: ServerSettings, host: str | None = None) -> int:
    host = host or os.environ.get("GLUONSEG_BIND_HOST", "0.0.0.0")
    if settings.workers_note:
        log.info("%s", settings.workers_note)
    if not settings.proxy:
        from serve.workers import GunicornServer

        log.warning(
            "serving WITHOUT nginx (--no-proxy / GLUONSEG_NO_PROXY): for debugging only. Slow clients and "
            "busy workers will hold every worker and make /ping time out; there is no queue bound."
        )
        log.info(
            "gunicorn on %s:%d, %d worker(s) x %d thread(s)",
            host,
            settings.port,
            settings.workers,
            settings.threads_per_worker,
        )
        GunicornServer(settings, f"{host}:{settings.port}").run()
        return 0
    supervisor = Supervisor(settings, host)
    log.info(
        "serving %s: nginx on %s:%d -> gunicorn on %s, %d worker(s) x %d thread(s), at most %d waiting "
        "(GLUONSEG_MAX_QUEUE), timeout %d s",
        settings.model_dir,
        host,
        settings.port,
        proxy.socket_path(supervisor.runtime),
        settings.workers,
        settings.threads_per_worker,
        settings.queue_limit,
        settings.timeout_s,
    )
    return supervisor.run()


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        settings = ServerSettings.from_env()
        return run(settings)
    except GluonsegError as exc:
        print(exc.failure_text(), file=sys.stderr)
        return 2


def settings_with(
    settings: ServerSettings, model_dir=None, port=None, workers=None, proxy=None, **inference: Any
) -> ServerSettings:
    """CLI overrides (`gluonseg serve --model-dir M --port P --workers N [--no-proxy] [--precision ..] ..`).

    `inference`: ServerSettings fields (backend, precision, calibration_dir, scale, native_max_pixels) to override.
    """
    changes: dict[str, Any] = dict(inference)
    if model_dir is not None:
        changes["model_dir"] = model_dir
        if workers is None and not settings.workers_asked:
            # The default count depends on the model's size: size it for this model, not /opt/ml's.
            count, note = default_workers(
                available_cpus(), Path(model_dir), inference.get("native_max_pixels") or settings.native_max_pixels
            )
            changes.update(workers=count, threads_per_worker=max(1, available_cpus() // count), workers_note=note)
    if port is not None:
        changes["port"] = port
    if proxy is not None:
        changes["proxy"] = proxy
    if workers is not None:
        changes["workers"] = workers
        changes["threads_per_worker"] = max(1, available_cpus() // workers)
        changes["workers_note"] = f"{workers} worker(s), as --workers asks"
        changes["workers_asked"] = True
    return replace(settings, **changes)


if __name__ == "__main__":
    sys.exit(main())
