"""Start the real `serve` command (nginx + gunicorn) on a free loopback port, and stop it."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from gluonseg.util import free_port


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    def __init__(self, model_dir: Path, workers: int = 2, **env: str):
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
            **env,
        }
        self.runtime = base / f"runtime-{self.port}"
        self.env.setdefault("GLUONSEG_RUNTIME_DIR", str(self.runtime))
        self.proc: subprocess.Popen | None = None
        self.log_path = base / f"server-{self.port}.log"

    def start(self, wait_ready: bool = True, timeout: float = 180) -> Server:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve")],
            env=self.env,
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

    def _wait_ready(self, wait_ready: bool, timeout: float) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = requests.get(self.url + "/ping", timeout=2)
                if r.status_code == 200 or not wait_ready:
                    return self
            except requests.ConnectionError:
                pass
            except requests.Timeout:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def master_pid(self) -> int:
        """gunicorn's master: the supervisor's child behind nginx, the `serve` process itself without it."""
        pid_file = Path(self.env["GLUONSEG_RUNTIME_DIR"]) / "gunicorn.pid"
        return int(pid_file.read_text()) if pid_file.exists() else self.proc.pid

    def nginx_pid(self) -> int:
        return int((Path(self.env["GLUONSEG_RUNTIME_DIR"]) / "nginx.pid").read_text())

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
