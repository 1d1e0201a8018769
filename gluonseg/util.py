"""Small helpers that several layers need, each written once. Imports only the standard library."""

from __future__ import annotations

import hashlib
import math
import os
import socket
from pathlib import Path

# 128 + SIGTERM: a job stopped on request (checkpoint saved, nothing to report as a failure).
STOPPED_EXIT_CODE = 143


def available_cpus(root: Path = Path("/")) -> int:
    """The cores this process may use, at least 1: its affinity mask (`docker run --cpuset-cpus`), capped by its
    cgroup's CPU quota rounded up (`docker run --cpus`, a Kubernetes CPU limit), as the JVM and Go count them.

    A quota does not show in the affinity mask: a container limited to 1 CPU on a 2-core machine still sees
    both cores, and sizing threads by the mask alone oversubscribes the quota (the kernel then throttles it).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(cpus, 1)


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time per period this process's cgroup may use (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us`), the tightest along its path; None when nothing limits it.

    A container sees its own cgroup at the mount's root; on a host, the cgroup is the path /proc/self/cgroup names.
    """
    cgroup = root / "sys/fs/cgroup"
    v2_path, v1_path = "", ""
    try:
        for line in (root / "proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2_path = path
            elif "cpu" in controllers.split(","):
                v1_path = path
    except (OSError, ValueError):
        pass
    limits = []
    for folder in _cgroup_folders(cgroup, v2_path):
        quota, _, period = (_read_text(folder / "cpu.max") or "max").partition(" ")
        limits.append(_ratio(quota, period))
    for mount in (cgroup / "cpu", cgroup / "cpu,cpuacct", cgroup / "cpuacct,cpu"):
        for folder in _cgroup_folders(mount, v1_path):
            limits.append(_ratio(_read_text(folder / "cpu.cfs_quota_us"), _read_text(folder / "cpu.cfs_period_us")))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _cgroup_folders(mount: Path, path: str) -> list[Path]:
    """The mount's root and, where they exist under it, the folders of `path` and its ancestors."""
    folders = [mount]
    parts = [part for part in path.strip("/").split("/") if part and part != ".."]
    for depth in range(1, len(parts) + 1):
        folder = mount.joinpath(*parts[:depth])
        if folder.is_dir():
            folders.append(folder)
    return folders


def _ratio(quota: str | None, period: str | None) -> float | None:
    """quota / period, or None for "no limit" (v2 `max`, v1 -1) or an unreadable pair."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host` (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def file_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (large parameter files)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


_digests: dict[tuple, str] = {}


def params_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """`file_digest`, remembered in this process while the file's inode, size and mtime stay the same.

    Loading with the ONNX backends or `auto` asks for the same parameters' digest several times (the choice
    record, the export folder, the export record, the INT8 record): about 0.3 s each for ResNet-101's 170 MB.
    """
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, algorithm)
    if key not in _digests:
        _digests[key] = file_digest(path, algorithm)
    return _digests[key]


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
