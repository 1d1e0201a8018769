"""Start the real `serve` command (gunicorn) on a free loopback port, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        )
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

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
