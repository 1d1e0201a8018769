"""Containers of the built images, run the way SageMaker runs them (tools/images.py builds the images)."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests
from PIL import Image

from benchmarks.common.server import _ServerProcess
from gluonseg.util import free_port
from tools import images

_names = itertools.count()


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return images.docker(*args, check=check, timeout=timeout)


class Container:
    """`docker run -d` of an image with SageMaker's argument; removed by `remove()` (the fixtures call it)."""

    def __init__(
        self,
        image: str,
        command: str,
        *,
        env: dict[str, str] | None = None,
        volumes: dict[Path, tuple[str, str]] | None = None,
        network: str = "host",
        options: tuple[str, ...] = (),
    ) -> None:
        self.image = image
        self.command = command
        self.env = dict(env or {})
        self.volumes = dict(volumes or {})
        self.network = network
        self.options = options
        self.name = f"gluonseg-test-{os.getpid()}-{next(_names)}"
        self.port: int | None = None

    def serving(self, port: int | None = None) -> Container:
        """Serve on a free loopback port of the host network (SAGEMAKER_BIND_TO_PORT, bound to 127.0.0.1)."""
        self.port = port or free_port()
        self.env.update(SAGEMAKER_BIND_TO_PORT=str(self.port), GLUONSEG_BIND_HOST="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        assert self.port is not None, "not a serving container"
        return f"http://127.0.0.1:{self.port}"

    def run_args(self) -> list[str]:
        args = ["--name", self.name, "--network", self.network, *self.options]
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        for host, (inside, mode) in self.volumes.items():
            args += ["-v", f"{host}:{inside}:{mode}"]
        return [*args, self.image, self.command]

    def start(self) -> Container:
        docker("run", "-d", *self.run_args())
        return self

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        return self.inspect()["State"]["Running"]

    def inspect(self) -> dict:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def wait(self, timeout: float = 600) -> int:
        return int(docker("wait", self.name, timeout=timeout).stdout.strip())

    def stop(self, grace_s: int = 30) -> int:
        """`docker stop -t grace_s` (SIGTERM, then SIGKILL after grace_s): the exit code."""
        docker("stop", "-t", str(grace_s), self.name, timeout=grace_s + 60)
        return int(self.inspect()["State"]["ExitCode"])

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match:
        """The first match of `pattern` in the logs, waiting up to `timeout` s; fails early if the container exits."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            match = re.search(pattern, logs)
            if match:
                return match
            if not self.running():
                raise AssertionError(f"{self.name} exited before logging {pattern!r}:\n{logs[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {pattern!r} in {timeout} s:\n{logs[-4000:]}")
            time.sleep(0.5)

    def wait_ready(self, timeout: float = 240) -> float:
        """Seconds until /ping answered 200 (SageMaker's limit is 4 minutes)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.running():
                raise AssertionError(f"{self.name} exited before /ping answered:\n{self.logs()[-4000:]}")
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: /ping not 200 within {timeout} s:\n{self.logs()[-4000:]}")


def run_to_end(container: Container, timeout: float = 900) -> tuple[int, str]:
    """Start, wait for the exit; (exit code, logs)."""
    container.start()
    code = container.wait(timeout)
    return code, container.logs()


class HostServer(_ServerProcess):
    """`gluonseg serve --model-dir M` on the host, as a user runs it before packing M: the reference."""

    name = "gluonseg serve"

    def __init__(self, model_dir: Path, log_path: Path) -> None:
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path

    def start(self, timeout: float = 600) -> HostServer:
        command = [str(Path(sys.executable).parent / "gluonseg"), "serve", "--model-dir", str(self.model_dir)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLUONSEG_")}
        env.pop("OMP_NUM_THREADS", None)  # the container has none set: the same default thread count
        return self._launch([*command, "--port", str(self.port)], env, None, True, timeout)


ACCEPTS = ("image/png", "application/x-recordio-protobuf")


def pictures(dataset: Path) -> list[bytes]:
    """JPEGs of varied sizes: the generated validation pictures, and two of them resized (larger, not square)."""
    found = []
    for i, path in enumerate(sorted((dataset / "validation").glob("*.jpg"))[:3]):
        found.append(path.read_bytes())
        if i < 2:
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").resize(((i + 2) * 97, (i + 1) * 71)).save(buffer, "JPEG", quality=92)
            found.append(buffer.getvalue())
    return found


def answers(url: str, jpegs: list[bytes]) -> list[dict[str, bytes]]:
    """Each picture's PNG mask and RecordIO-protobuf probabilities from the server at `url`."""
    out = []
    for jpeg in jpegs:
        row = {}
        for accept in ACCEPTS:
            r = requests.post(
                url + "/invocations", data=jpeg, headers={"Content-Type": "image/jpeg", "Accept": accept}, timeout=70
            )
            assert r.status_code == 200, r.text
            row[accept] = r.content
        out.append(row)
    return out
