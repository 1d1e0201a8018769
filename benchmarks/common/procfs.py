"""A process's memory as the kernel reports it in /proc/<pid>/status (VmRSS now, VmHWM its peak)."""

from __future__ import annotations

from pathlib import Path


def status_bytes(pid: int, key: str) -> int | None:
    """The /proc/<pid>/status memory field `key` (VmRSS, VmHWM) in bytes; None when it is not there."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes(pid: int) -> int:
    """VmRSS in bytes; a process without one (a zombie) is an error."""
    value = status_bytes(pid, "VmRSS")
    if value is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return value


def status_mb(pid: int, key: str) -> float:
    """The field in MiB; NaN when it is not there."""
    value = status_bytes(pid, key)
    return float("nan") if value is None else value / 2**20
