"""Small helpers that several layers need, each written once. Imports only the standard library."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

# 128 + SIGTERM: a job stopped on request (checkpoint saved, nothing to report as a failure).
STOPPED_EXIT_CODE = 143


def available_cpus() -> int:
    """The cores this process may run on (its affinity mask, as containers set it), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


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
