"""Networks that run the exported model.onnx (gluonseg.inference.onnx_export) outside MXNet.

Both follow gluonseg.inference.network's contract: a normalised (3, H, W) float32 picture in, (C, H, W)
float32 logits out, H and W multiples of 8, so the Predictor's geometry and post-processing are the same
for every backend.

- ONNX Runtime: the CUDA provider when onnxruntime-gpu sees a GPU, else the CPU; the provider in use is
  logged and kept in `provider`. FP32, and INT8 from the QDQ model-int8.onnx (gluonseg.inference.int8_onnx).
- OpenVINO: the CPU plugin, FP32 or BF16 (`INFERENCE_PRECISION_HINT`; BF16 runs on AMX/AVX-512-BF16
  where the CPU has them, and OpenVINO falls back to FP32 where it has not, which `precision` then says).
  For BF16 the graph's large-dilation convolutions are rewritten first (gluonseg.inference.onnx_rewrites).
  INT8: the QDQ model-int8.onnx, whose quantized convolutions OpenVINO runs with integer kernels (the rest FP32).

Threads: OMP_NUM_THREADS when set (the server gives each worker its share of the cores), else every
core this process may use; OpenVINO pins its threads to cores only when the process has every core.
ONNX Runtime sessions may be called from several threads; an OpenVINO compiled model is called through
one infer request under a lock.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.errors import ClientError
from gluonseg.inference.onnx_ops import INPUT_NAME
from gluonseg.inference.onnx_rewrites import split_large_dilations
from gluonseg.util import available_cpus

log = logging.getLogger(__name__)

ONNX_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def threads() -> int:
    """Intra-op threads for one process: OMP_NUM_THREADS when set, else the cores it may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cpus()


def check_backend_precision(backend: str, precision: str) -> None:
    """ClientError when `backend` cannot run `precision`."""
    allowed = ONNX_PRECISIONS[backend]
    if precision not in allowed:
        raise ClientError(f"backend {backend} runs precision {', '.join(allowed)}, not {precision}")


class OnnxRuntimeNetwork:
    backend = "onnxruntime"

    def __init__(
        self, path: Path, num_threads: int | None = None, prefer_gpu: bool = True, precision: str = "fp32"
    ) -> None:
        import onnxruntime as ort

        self.precision = precision  # of the file: model.onnx or the QDQ model-int8.onnx
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its own warnings go to stderr unformatted; errors still raise
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if prefer_gpu and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self.provider = self._session.get_providers()[0]
        count = options.intra_op_num_threads
        log.info("ONNX Runtime %s on %s (%d threads): %s", ort.__version__, self.provider, count, path)

    def logits(self, data: np.ndarray) -> np.ndarray:
        batch = data if data.ndim == 4 else data[None]
        out = self._session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out if data.ndim == 4 else out[0]


# OpenVINO's CPU plugin keeps compiled kernels for each input shape it has seen, up to 5,000 shapes by default: a
# worker answering pictures of varied sizes (native scale: each size is a shape) grew 5-7 MB a picture for good
# (150 pictures of 300-1000 px: +820 to +1,050 MB). Without the cache it stays flat (+19 to +129 MB), and
# repeated shapes run as fast (BENCHMARKS.md, *openvino shapes*).
RUNTIME_CACHE_CAPACITY = 0


class OpenVinoNetwork:
    backend = "openvino"

    def __init__(self, path: Path, precision: str = "fp32", num_threads: int | None = None) -> None:
        import openvino as ov

        check_backend_precision(self.backend, precision)
        core = ov.Core()
        hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]  # INT8: the file's QDQ layers
        count = num_threads or threads()
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": count,
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to cores by default, counting from the first: two 1-thread server
            # workers then share one core (measured: half the requests/s). Pin only a process that has them all.
            "ENABLE_CPU_PINNING": count >= available_cpus(),
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_CAPACITY,
        }
        self._compiled = core.compile_model(self._read(core, Path(path), precision), "CPU", config)
        used = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # 'bf16' or 'f32'
        self.precision = "int8" if precision == "int8" else "bf16" if used == "bf16" else "fp32"
        if self.precision != precision:
            log.warning("OpenVINO runs %s here, not %s (this CPU has no BF16 support)", self.precision, precision)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        log.info("OpenVINO %s on CPU, %s (%d threads): %s", ov.__version__, self.precision, count, path)

    @staticmethod
    def _read(core: Any, path: Path, precision: str) -> Any:
        """The model, with large-dilation convolutions split for BF16 (gluonseg.inference.onnx_rewrites).

        The file is read once: OpenVINO reads the (possibly rewritten) model from the same bytes.
        """
        if precision != "bf16":
            return core.read_model(str(path))
        import onnx

        data = path.read_bytes()
        model = onnx.load_model_from_string(data)
        count = split_large_dilations(model)
        if count:
            log.info("OpenVINO BF16: %d large-dilation convolution(s) run as 1x1 taps (onnx_rewrites)", count)
            data = model.SerializeToString()
        del model  # the graph's weights: as large as the file
        return core.read_model(data)

    def logits(self, data: np.ndarray) -> np.ndarray:
        batch = data if data.ndim == 4 else data[None]
        with self._lock:
            result = self._request.infer({INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
            # Copied out under the lock: the request's output tensor is reused by the next call.
            return np.array(result[0] if data.ndim == 4 else result[0][0], dtype=np.float32, copy=True)
