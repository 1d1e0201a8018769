"""A multi-host job on one machine: N simulated hosts over loopback, for people without a cluster.

    gluonseg train --hosts 2 --data DIR --model-dir DIR [KEY=VALUE ...]

The CLI parses the flags and calls `run_local_cluster` with the values; this module never imports the CLI.
Each simulated host `algo-<i>` gets its own /opt/ml-like tree under `WORK/algo-<i>` (default WORK:
MODEL_DIR/.hosts): `input/config/{hyperparameters,resourceconfig,inputdataconfig}.json` and `input/data/`
with the channels of DATA linked in. Then `train` runs once per host with SAGEMAKER_BASE_DIR pointing at
its tree, exactly as on N instances: each starts its own server and worker, the first also the scheduler,
all on 127.0.0.1 (interface `lo`). The first host's `model/`, `checkpoints/` and `output/` are links to
MODEL_DIR, MODEL_DIR/checkpoints and MODEL_DIR/output (like `gluonseg train`); the other hosts' logs and
outputs stay in their trees (`WORK/algo-<i>/train.log`).

With `--distribution ShardedByS3Key`, the image channels are split the way SageMaker shards S3 objects
(host i gets every N-th file) while the annotation channels stay FullyReplicated.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from gluonseg.errors import ClientError
from gluonseg.training.distributed.spec import (
    HOST_ADDRESSES_ENV,
    LAUNCHER_PID_ENV,
    PEER_TIMEOUT_ENV,
    PS_PORT_ENV,
    WATCHDOG_PORT_ENV,
)
from gluonseg.util import STOPPED_EXIT_CODE, available_cpus, free_port

CHANNELS = ("train", "train_annotation", "validation", "validation_annotation", "label_map", "model")
IMAGE_CHANNELS = ("train", "validation")
HOST_EXIT_GRACE = 30.0  # seconds, on top of the peer timeout, for the other hosts to stop after one failed


def host_names(count: int) -> list[str]:
    if count < 1:
        raise ClientError(f"--hosts must be at least 1, got {count}")
    return [f"algo-{i}" for i in range(1, count + 1)]


def _relink(link: Path, target: Path) -> None:
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve(), target_is_directory=True)


def _shard_folder(source: Path, dest: Path, index: int, count: int) -> None:
    """Every `count`-th visible file of `source` (sorted relative paths, from `index`), linked into `dest`."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    files = sorted(
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )
    for rel in files[index::count]:
        link = dest / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((source / rel).resolve())
    dest.mkdir(parents=True, exist_ok=True)


def build_host_tree(
    base: Path,
    host: str,
    hosts: Sequence[str],
    data: Path,
    hyperparameters: dict[str, str],
    distribution: str = "FullyReplicated",
) -> Path:
    """Write one simulated host's /opt/ml tree (config files, linked channels); return `base`."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": host, "hosts": list(hosts), "network_interface_name": "lo"})
    )
    channels = [name for name in CHANNELS if (data / name).is_dir()]
    if not channels:
        raise ClientError(f"--data {data} holds none of the channel folders {', '.join(CHANNELS)}")
    input_config = {}
    for name in channels:
        sharded = distribution == "ShardedByS3Key" and name in IMAGE_CHANNELS
        input_config[name] = {
            "TrainingInputMode": "File",
            "S3DistributionType": "ShardedByS3Key" if sharded else "FullyReplicated",
            "RecordWrapperType": "None",
        }
        if sharded:
            _shard_folder(data / name, base / "input" / "data" / name, list(hosts).index(host), len(hosts))
        else:
            _relink(base / "input" / "data" / name, data / name)
    (config / "inputdataconfig.json").write_text(json.dumps(input_config))
    return base


class LocalCluster:
    """N `train` processes, one per simulated host, with their output prefixed and logged per host.

    `host_command` (an argv list) is the `train` entry point each simulated host runs; it finds itself a
    simulated host by `LAUNCHER_PID_ENV` and dies with the launcher.
    """

    def __init__(
        self,
        hosts: int,
        data: Path,
        model_dir: Path,
        hyperparameters: dict[str, str],
        work_dir: Path | None = None,
        checkpoint_dir: Path | None = None,
        output_dir: Path | None = None,
        distribution: str = "FullyReplicated",
        environ: dict[str, str] | None = None,
        echo: bool = True,
        host_command: Sequence[str] = (),
    ):
        if distribution not in ("FullyReplicated", "ShardedByS3Key"):
            raise ClientError(f"--distribution must be FullyReplicated or ShardedByS3Key, got {distribution!r}")
        self.hosts = host_names(hosts)
        self.data = Path(data)
        self.model_dir = Path(model_dir)
        self.work_dir = Path(work_dir) if work_dir else self.model_dir / ".hosts"
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else self.model_dir / "checkpoints"
        self.output_dir = Path(output_dir) if output_dir else self.model_dir / "output"
        self.hyperparameters = dict(hyperparameters)
        self.distribution = distribution
        self.environ = dict(os.environ if environ is None else environ)
        self.echo = echo
        self.host_command = list(host_command)
        self.procs: dict[str, subprocess.Popen] = {}
        self._pumps: list[threading.Thread] = []
        self._print_lock = threading.Lock()

    def host_dir(self, host: str) -> Path:
        return self.work_dir / host

    def log_path(self, host: str) -> Path:
        return self.host_dir(host) / "train.log"

    def prepare(self) -> None:
        if not self.data.is_dir():
            raise ClientError(f"--data {self.data} is not a folder")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            base = self.host_dir(host)
            build_host_tree(base, host, self.hosts, self.data, self.hyperparameters, self.distribution)
            if host == self.hosts[0]:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                self.output_dir.mkdir(parents=True, exist_ok=True)
                _relink(base / "model", self.model_dir)
                _relink(base / "checkpoints", self.checkpoint_dir)
                _relink(base / "output", self.output_dir)
            # A failure file from an earlier attempt would be mistaken for this one's.
            with contextlib.suppress(OSError):
                (base / "output" / "failure").unlink()

    def environment(self, host: str, ps_port: int, watchdog_port: int) -> dict[str, str]:
        env = {k: v for k, v in self.environ.items() if not k.startswith("DMLC_")}
        env.update(
            SAGEMAKER_BASE_DIR=str(self.host_dir(host)),
            PYTHONUNBUFFERED="1",
        )
        env[HOST_ADDRESSES_ENV] = ",".join(f"{h}=127.0.0.1" for h in self.hosts)
        env[PS_PORT_ENV] = str(ps_port)
        env[WATCHDOG_PORT_ENV] = str(watchdog_port)
        env[LAUNCHER_PID_ENV] = str(os.getpid())
        # N hosts share this machine's cores; MXNet would otherwise start one thread per core in each.
        env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // len(self.hosts))))
        return env

    def start(self) -> None:
        if not self.host_command:
            raise ValueError("LocalCluster.start needs the host_command that each simulated host runs")
        self.prepare()
        ps_port, watchdog_port = free_port(), free_port()
        for host in self.hosts:
            log_file = open(self.log_path(host), "a", encoding="utf-8")  # noqa: SIM115 - closed by the pump
            proc = subprocess.Popen(
                self.host_command,
                env=self.environment(host, ps_port, watchdog_port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # Ctrl-C reaches the launcher only, which stops the hosts gracefully
            )
            self.procs[host] = proc
            pump = threading.Thread(target=self._pump, args=(host, proc, log_file), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, host: str, proc: subprocess.Popen, log_file) -> None:
        with log_file:
            for line in proc.stdout:
                log_file.write(line)
                log_file.flush()
                if self.echo:
                    with self._print_lock:
                        sys.stdout.write(f"[{host}] {line}")
                        sys.stdout.flush()

    def terminate(self) -> None:
        """SIGTERM to every host: a graceful stop with a checkpoint, as StopTrainingJob does."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Wait for every host; once one has failed, the others get the peer timeout plus a grace period
        to stop on their own before they are killed. Returns {host: exit code}."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failed_at = None
        bound = float(self.environ.get(PEER_TIMEOUT_ENV) or 60) + HOST_EXIT_GRACE
        while any(p.poll() is None for p in self.procs.values()):
            now = time.monotonic()
            if failed_at is None and any(p.poll() not in (None, 0) for p in self.procs.values()):
                failed_at = now
            if (failed_at is not None and now - failed_at > bound) or (deadline is not None and now > deadline):
                self.kill()
                break
            time.sleep(0.2)
        for proc in self.procs.values():
            proc.wait()
        for pump in self._pumps:
            pump.join(timeout=5)
        return {host: proc.returncode for host, proc in self.procs.items()}

    def failure(self, host: str) -> str | None:
        path = self.host_dir(host) / "output" / "failure"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None


def exit_code(codes: dict[str, int]) -> int:
    """0 if every host succeeded; else the first failing host's code (a stop, 143, only if all stopped)."""
    failing = [c for c in codes.values() if c != 0]
    if not failing:
        return 0
    real = [c for c in failing if c != STOPPED_EXIT_CODE]
    code = (real or failing)[0]
    return code if code > 0 else 1


def run_local_cluster(
    hosts: int,
    data: Path,
    model_dir: Path,
    hyperparameters: dict[str, str],
    work_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    output_dir: Path | None = None,
    distribution: str = "FullyReplicated",
    *,
    host_command: Sequence[str],
) -> int:
    """Run the job on `hosts` simulated hosts, each running `host_command` (the `train` entry point); print
    each host's output; return the exit code."""
    cluster = LocalCluster(
        hosts,
        data,
        model_dir,
        hyperparameters,
        work_dir,
        checkpoint_dir,
        output_dir,
        distribution=distribution,
        host_command=host_command,
    )
    interrupts = {"count": 0}

    def on_signal(signum, frame):
        interrupts["count"] += 1
        if interrupts["count"] == 1:
            print("stopping every host (checkpoint first); interrupt again to kill them", file=sys.stderr)
            cluster.terminate()
        else:
            cluster.kill()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster.start()
        codes = cluster.wait()
    finally:
        cluster.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
    for host, code in codes.items():
        reason = cluster.failure(host)
        status = "ok" if code == 0 else f"exit code {code}" + (f": {reason}" if reason else "")
        print(f"{host}: {status}", file=sys.stderr if code else sys.stdout)
    code = exit_code(codes)
    if code == 0:
        print(f"model written to {cluster.model_dir}")
    return code
