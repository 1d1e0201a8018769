"""A server process on a free loopback port for the benchmarks: start it, wait for /ping, read its worker
pids, stop it.

`Server` is the real `serve` command (nginx in front of gunicorn, as SageMaker runs it); `AppServer` is a
gunicorn app alone (the stock GluonCV baseline). Each runs in its own session with its output in a log
file, and dies with the process that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Self

import requests

from gluonseg.util import free_port

REPO = Path(__file__).resolve().parents[2]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _ServerProcess:
    """A process answering HTTP on 127.0.0.1:`port`, its output in `log_path`."""

    name = "server"
    port: int
    url: str
    log_path: Path
    log: IO[str]
    proc: subprocess.Popen | None = None

    def _launch(
        self, command: list[str], env: dict[str, str], cwd: Path | None, wait_ready: bool, timeout: float
    ) -> Self:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # a test or benchmark that dies takes its server along
        )
        try:
            return self._wait_ready(wait_ready, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, wait_ready: bool, timeout: float) -> Self:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = requests.get(self.url + "/ping", timeout=2)
                if r.status_code == 200 or not wait_ready:
                    return self
            except requests.ConnectionError:
                pass
            except requests.Timeout:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def master_pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.master_pid())], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # nginx and gunicorn die with it (PR_SET_PDEATHSIG)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Server(_ServerProcess):
    """The `serve` console script for `model_dir`, with `workers` gunicorn workers and extra environment.

    GLUONSEG_BACKEND is mxnet unless given: tests and benchmarks compare against MXNet FP32, the reference,
    and would otherwise pay auto's first-load measuring in every server. GLUONSEG_BACKEND="" (unset) starts
    the serving default, auto.
    """

    def __init__(self, model_dir: Path, workers: int = 2, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = model_dir.parent
        self.env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base),
            "GLUONSEG_MODEL_DIR": str(model_dir),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "GLUONSEG_BIND_HOST": "127.0.0.1",
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
            "GLUONSEG_BACKEND": "mxnet",
            **env,
        }
        self.runtime = base / f"runtime-{self.port}"
        self.env.setdefault("GLUONSEG_RUNTIME_DIR", str(self.runtime))
        self.log_path = base / f"server-{self.port}.log"

    def start(self, wait_ready: bool = True, timeout: float = 180) -> Server:
        return self._launch([str(Path(sys.executable).parent / "serve")], self.env, None, wait_ready, timeout)

    def master_pid(self) -> int:
        """gunicorn's master: the supervisor's child behind nginx, the `serve` process itself without it."""
        pid_file = Path(self.env["GLUONSEG_RUNTIME_DIR"]) / "gunicorn.pid"
        return int(pid_file.read_text()) if pid_file.exists() else self.proc.pid

    def nginx_pid(self) -> int:
        return int((Path(self.env["GLUONSEG_RUNTIME_DIR"]) / "nginx.pid").read_text())


class AppServer(_ServerProcess):
    """gunicorn alone serving `app` (a "module:factory()" spec), `workers` x 1 thread, one OpenMP thread each."""

    def __init__(self, app: str, workers: int, log_dir: Path, name: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.workers = workers
        self.name = f"{name} server"
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MXNET_CPU_WORKER_NTHREADS": "1",
            "PYTHONPATH": str(REPO),
            **env,
        }
        self.log_path = log_dir / f"{name}-{self.port}.log"

    def start(self, timeout: float = 300) -> AppServer:
        command = [
            str(Path(sys.executable).parent / "gunicorn"),
            f"--workers={self.workers}",
            "--threads=1",
            f"--bind=127.0.0.1:{self.port}",
            "--timeout=900",
            self.app,
        ]
        return self._launch(command, self.env, REPO, True, timeout)
