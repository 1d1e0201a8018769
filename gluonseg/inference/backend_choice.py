"""`backend=auto`: measure the backends this machine has on the model, keep the faithful ones, take the fastest.

At load, each candidate (backend x precision) is built and
1. checked: its masks on the check pictures must equal MXNet FP32's on at least MIN_AGREEMENT of the pixels.
   The check pictures are, in order: GLUONSEG_CALIBRATION_DIR's images when given; the job's own pictures that
   training kept in the model folder (gluonseg.data.check_set); else generated pictures, and the log says so
   (generated shapes judge a real model poorly: a VOC-shaped model's BF16 was refused on them at 98.6% while it
   matched FP32 on 99.9% of the job's validation pixels);
2. timed: one warm-up call, then the median of TIMED_RUNS calls on a picture of TIMING_SIDE x TIMING_SIDE
   (GLUONSEG_AUTO_TIMING_SIDE; gluonseg.inference.choices), the native-scale canvas the server runs for
   such a picture, whatever the crop size, with the threads the worker has.
The fastest faithful candidate is built again and kept (MXNet FP32, the reference, always qualifies);
each candidate is freed before the next is built, so measuring needs the memory of one at a time. One worker measures
while the others wait on a lock (two measuring at once would disturb each other's timings). The measurements
and the choice are logged and written to backend-choice.json in the model folder when it is writable, else
in the cache of gluonseg.inference.onnx_cache (a record shipped in a read-only model folder is read first),
keyed by the CPU's model and flags, the thread count, the parameters' SHA-256, the library versions, ONNX
Runtime's providers (CUDA seen or not), the candidates and the timing side: a later load on the same kind of
machine reuses the choice without measuring, and any change of key measures again.

Candidates, in this order: MXNet FP32 (the reference); the model folder's INT8 model (model-int8.onnx,
gluonseg.inference.int8_onnx) in OpenVINO then ONNX Runtime, when training or `gluonseg quantize --format onnx`
kept one; OpenVINO BF16 when the CPU has BF16 instructions; OpenVINO FP32; ONNX Runtime FP32; MXNet INT8 when
the model folder has `gluonseg quantize`'s MXNet files (no calibration at load). Not MXNet BF16 (see
candidates()). A candidate that fails to build is logged and skipped. Load
must stay inside SageMaker's 4-minute /ping window whatever the model: once measuring (the export included) has
taken GLUONSEG_AUTO_BUDGET_S seconds (choices.MEASURE_BUDGET_S by default) the remaining candidates are skipped
(logged, and listed in the record). The order puts those that were fastest on the machines measured
(BENCHMARKS.md "backends") first, so a cut drops likely losers.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.artifacts import ModelArtifact
from gluonseg.data.check_set import read_check_set
from gluonseg.errors import GluonsegError, error_summary
from gluonseg.inference.choices import measure_budget, timing_side
from gluonseg.inference.geometry import native_canvas, resize_picture
from gluonseg.inference.int8_onnx import int8_onnx_path
from gluonseg.inference.network import Network
from gluonseg.inference.onnx_backends import threads
from gluonseg.inference.onnx_cache import folder_lock, work_folder
from gluonseg.inference.onnx_export import CHECK_MAX_PIXELS, check_pictures
from gluonseg.inference.precision import INT8_SYMBOL
from gluonseg.util import cpu_flags, cpu_model, params_digest

log = logging.getLogger(__name__)

CHOICE_FILE = "backend-choice.json"
CHOICE_LOCK = ".gluonseg-choice.lock"  # not the export's lock: measuring builds networks, which may export
MIN_AGREEMENT = 0.995
TIMED_RUNS = 3
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def candidates(artifact: ModelArtifact, flags: set[str]) -> list[tuple[str, str]]:
    """(backend, precision) pairs worth measuring on this machine, the reference first."""
    bf16 = any(flag in flags for flag in BF16_FLAGS)
    found = [("mxnet", "fp32")]
    if int8_onnx_path(artifact) is not None:
        found += [("openvino", "int8"), ("onnxruntime", "int8")]
    if bf16:
        found.append(("openvino", "bf16"))
    found += [("openvino", "fp32"), ("onnxruntime", "fp32")]
    if (artifact.folder / INT8_SYMBOL).exists():
        found.append(("mxnet", "int8"))
    # MXNet BF16 is not a candidate: on every CPU measured OpenVINO BF16, a candidate wherever it could be, beat
    # it, in the network and more so through the server (Xeon with AMX: 0.72x MXNet FP32's network time and 0.46x
    # its requests/s, BENCHMARKS.md "backends"; EPYC with AVX-512 BF16: network 0.653 s vs OpenVINO BF16's 0.580 s,
    # server 0.358 vs 0.794 req/s, no faster than its own FP32, issue #24). Measuring it also cost the most memory
    # (a converted graph per shape: the measuring worker peaked at 3.2 GB against FCN-R101's 1.7 GB).
    # GLUONSEG_BACKEND=mxnet GLUONSEG_PRECISION=bf16 still runs it.
    return found


def choice_key(artifact: ModelArtifact) -> dict[str, Any]:
    """What a measured choice depends on: the machine, the parameters and the libraries."""
    import mxnet
    import onnxruntime
    import openvino

    return {
        "cpu": cpu_model(),
        "flags": sorted(cpu_flags()),
        "threads": threads(),
        "params_sha256": params_digest(artifact.params_path),
        "versions": {lib.__name__: lib.__version__ for lib in (mxnet, onnxruntime, openvino)},
        "onnxruntime_providers": onnxruntime.get_available_providers(),  # a GPU seen or not changes the race
        "candidates": [list(pair) for pair in candidates(artifact, cpu_flags())],  # an INT8 model added since
        "timing_side": timing_side(),
    }


def choose_network(
    artifact: ModelArtifact,
    make: Callable[[str, str], Network],
    calibration_dir: Path | None = None,
) -> Network:
    """The fastest faithful network for this model on this machine (see the module docstring)."""
    key = choice_key(artifact)
    shipped = _read(artifact.folder / CHOICE_FILE)  # made where the folder was writable, and shipped with it
    if shipped is not None and shipped.get("key") == key:
        return _reuse(shipped, artifact.folder / CHOICE_FILE, make)
    record_path = work_folder(artifact) / CHOICE_FILE
    # One worker measures while the others wait (their timings would disturb each other), then they reuse it.
    with folder_lock(record_path.parent, CHOICE_LOCK):
        cached = _read(record_path)
        if cached is not None and cached.get("key") == key:
            return _reuse(cached, record_path, make)
        return _measure_and_choose(artifact, make, calibration_dir, key, record_path)


def _reuse(record: dict[str, Any], path: Path, make: Callable[[str, str], Network]) -> Network:
    backend, precision = record["choice"]
    log.info("backend auto: %s %s (measured before on this machine: %s)", backend, precision, path)
    return make(backend, precision)


def _measure_and_choose(
    artifact: ModelArtifact,
    make: Callable[[str, str], Network],
    calibration_dir: Path | None,
    key: dict[str, Any],
    record_path: Path,
) -> Network:
    start = time.perf_counter()
    budget = measure_budget()
    pictures, judged_on = judging_pictures(artifact, calibration_dir)
    canvases = [native_canvas(picture, CHECK_MAX_PIXELS)[0] for _, picture in pictures]
    side = key["timing_side"]
    timing_input = native_canvas(resize_picture(pictures[0][1], side, side), side * side)[0]
    reference_masks: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    skipped: list[list[str]] = []
    best: tuple[float, str, str] | None = None
    for backend, precision in key["candidates"]:  # listed once, for the key
        if reference_masks and time.perf_counter() - start > budget:
            skipped.append([backend, precision])
            continue
        try:
            network = make(backend, precision)
        except (GluonsegError, RuntimeError, ValueError, OSError) as exc:
            log.warning("backend auto: %s %s unavailable (%s)", backend, precision, error_summary(exc))
            continue
        if (network.backend, network.precision) != (backend, precision):  # fell back (e.g. no oneDNN BF16 here)
            del network
            continue
        masks = [network.logits(c).argmax(axis=0) for c in canvases]
        if not reference_masks:
            reference_masks = masks
        agreement = sum(int((a == b).sum()) for a, b in zip(masks, reference_masks)) / sum(m.size for m in masks)
        seconds = median_seconds(network, timing_input)
        rows.append({"backend": backend, "precision": precision, "seconds": seconds, "agreement": agreement})
        if agreement >= MIN_AGREEMENT and (best is None or seconds < best[0]):
            best = (seconds, backend, precision)
        # Freed before the next is built, the winner too (built again below): holding it while measuring the
        # rest added its memory to each candidate's (measured: the measuring worker peaked 1.4-2.1x higher).
        del network
        gc.collect()
    assert best is not None, "MXNet FP32, the reference, always qualifies"
    choice = best[1:]
    record = {
        "key": key,
        "choice": list(choice),
        "measured": rows,
        "skipped": skipped,
        "input": [side, side],
        "judged_on": judged_on,
    }
    record["seconds_to_choose"] = round(time.perf_counter() - start, 1)
    log.info("backend auto: timed at %dx%d on %s, judged on %s", side, side, key["cpu"], judged_on)
    for row in rows:
        log.info(
            "  %-12s %-5s %8.3f s  %7.3f%% of pixels as MXNet FP32%s",
            row["backend"],
            row["precision"],
            row["seconds"],
            100 * row["agreement"],
            "" if row["agreement"] >= MIN_AGREEMENT else f"  (under {MIN_AGREEMENT:.1%}: not used)",
        )
    if skipped:
        log.warning(
            "backend auto: not measured, over the %.0f s budget (GLUONSEG_AUTO_BUDGET_S): %s",
            budget,
            ", ".join(" ".join(pair) for pair in skipped),
        )
    log.info("backend auto: chose %s %s in %.1f s", *choice, record["seconds_to_choose"])
    try:
        record_path.write_text(json.dumps(record, indent=1))
    except OSError as exc:
        log.warning("backend auto: could not keep the choice in %s (%s)", record_path, exc)
    return make(*choice)


def judging_pictures(artifact: ModelArtifact, calibration_dir: Path | None) -> tuple[list[tuple[str, np.ndarray]], str]:
    """(name, picture) pairs every candidate is judged on, and what they are (see the module docstring)."""
    if calibration_dir is not None:
        pictures = check_pictures(calibration_dir, artifact.num_classes)
        return pictures, f"{len(pictures)} picture(s) of GLUONSEG_CALIBRATION_DIR {calibration_dir}"
    kept = read_check_set(artifact.folder)
    if kept:
        return [
            (c.name, c.picture) for c in kept
        ], f"the model's {len(kept)} check picture(s) ({artifact.folder}/check)"
    log.warning(
        "backend auto: the model folder keeps no check pictures (trained before they were kept, or in Pipe mode): "
        "judging on generated pictures; set GLUONSEG_CALIBRATION_DIR to a folder of pictures like those served"
    )
    pictures = check_pictures(None, artifact.num_classes)
    return pictures, f"{len(pictures)} generated picture(s)"


def median_seconds(network: Network, data: np.ndarray, runs: int = TIMED_RUNS) -> float:
    """The median of `runs` calls of `network` on `data`, after one warm-up call."""
    network.logits(data)  # warm-up: first-call compilation and allocation are not the steady state
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        network.logits(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None
