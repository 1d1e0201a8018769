"""How many workers this machine holds: one per core, but never more than the memory fits.

A worker's peak memory is dominated by the network's parameters and the activations of the largest
picture it runs (the native scale's canvas is bounded by GLUONSEG_NATIVE_MAX_PIXELS), so it is
estimated from the model's algorithm and backbone with figures measured by benchmarks/worker_memory.py
(BENCHMARKS.md, "Worker memory"), or given outright with GLUONSEG_WORKER_MEMORY_MB. Available memory
is the container's cgroup limit less what is in use, or MemAvailable, whichever is smaller.
"""

from __future__ import annotations

import json
from pathlib import Path

MB = 1 << 20
REFERENCE_PIXELS = 1 << 20  # the measured peaks below are at the default native bound (1 MP)
# Peak RSS (VmHWM, MB) of one worker over pictures of 300-1000 px a side at the 1 MP native bound, FP32,
# ResNet-50, 21 classes (benchmarks/worker_memory.py, BENCHMARKS.md "worker memory"): the highest seen in
# any run, 1,000 requests each: FCN 1,894 (1,906 in an earlier 500-request run), PSP 3,903, DeepLab 2,055.
# "Activations" is the part that scales with the canvas: the peak less the worker's RSS once its model
# is loaded (546, 700 and 625 MB, measured the same way).
MEASURED_PEAK_MB = {"fcn": 1906, "psp": 3903, "deeplab": 2055}
ACTIVATIONS_MB = {"fcn": 1360, "psp": 3203, "deeplab": 1430}
# Not measured: ResNet-101 has 19 M more parameters than ResNet-50, held twice (the weights and
# oneDNN's reordered copy), ~150 MB, plus a margin for its deeper memory plan.
RESNET101_EXTRA_MB = 250
RESERVED_MB = 300  # nginx, the gunicorn master and the page cache the model files need


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def memory_available_bytes(root: Path = Path("/")) -> int | None:
    """Bytes this process may still use: min(cgroup limit - cgroup usage, MemAvailable); None if unknown."""
    candidates = []
    cgroup = root / "sys/fs/cgroup"
    for limit_file, usage_file in (
        (cgroup / "memory.max", cgroup / "memory.current"),  # cgroup v2
        (cgroup / "memory/memory.limit_in_bytes", cgroup / "memory/memory.usage_in_bytes"),  # v1
    ):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # v1 says "no limit" with a huge number
            candidates.append(max(0, limit - (_read_int(usage_file) or 0)))
            break
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return min(candidates) if candidates else None


def worker_peak_mb(model_dir: Path, native_max_pixels: int) -> tuple[int, str]:
    """(estimated peak MB of one worker, what it was estimated from)."""
    try:
        hp = json.loads((Path(model_dir) / "hyperparams.json").read_text())
        algorithm, backbone = str(hp.get("algorithm", "")), str(hp.get("backbone", ""))
    except (OSError, ValueError, AttributeError):
        algorithm, backbone = "", ""
    if algorithm not in MEASURED_PEAK_MB:
        # Unknown until the model is read: assume the largest network, so we never overcommit.
        algorithm = max(MEASURED_PEAK_MB, key=MEASURED_PEAK_MB.__getitem__)
        backbone = "resnet-101"
    activations = ACTIVATIONS_MB[algorithm] * native_max_pixels / REFERENCE_PIXELS
    peak = MEASURED_PEAK_MB[algorithm] - ACTIVATIONS_MB[algorithm] + activations
    if backbone == "resnet-101":
        peak += RESNET101_EXTRA_MB
    return int(peak), f"{algorithm}/{backbone} at {native_max_pixels / 1e6:.2f} MP"


def default_workers(
    cores: int,
    model_dir: Path,
    native_max_pixels: int,
    peak_mb: int | None = None,
    available_bytes: int | None = None,
) -> tuple[int, str]:
    """(workers, the arithmetic in words): min(cores, (available - reserved) // peak), at least 1."""
    if peak_mb is None:
        peak_mb, source = worker_peak_mb(model_dir, native_max_pixels)
        source = f"estimated peak {peak_mb} MB per worker ({source})"
    else:
        source = f"peak {peak_mb} MB per worker (GLUONSEG_WORKER_MEMORY_MB)"
    available = available_bytes if available_bytes is not None else memory_available_bytes()
    if available is None:
        return cores, f"{cores} worker(s): one per core ({cores} cores; available memory unknown)"
    fit = max(0, available // MB - RESERVED_MB) // max(1, peak_mb)
    workers = max(1, min(cores, fit))
    why = "one per core" if workers == cores else "what the memory holds"
    note = (
        f"{workers} worker(s): {why} (min({cores} cores, ({available // MB} MB available - {RESERVED_MB} MB "
        f"reserved) // {source} = {fit}))"
    )
    if fit < 1:
        note += "; WARNING: even one worker may not fit, expect the kernel's OOM killer"
    return workers, note
