"""Rewrite one section of BENCHMARKS.md, stamped with the machine, date, versions and command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

from gluonseg.util import cpu_flags, cpu_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


# The flags that decide which kernels MXNet, ONNX Runtime and OpenVINO can use on this CPU.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def machine() -> str:
    present = " ".join(f for f in KERNEL_FLAGS if f in cpu_flags()) or "none of " + " ".join(KERNEL_FLAGS)
    return f"{cpu_model()} (flags: {present}), {os.cpu_count()} cores, Python {platform.python_version()}"


def versions() -> str:
    import mxnet
    import numpy
    import PIL

    text = f"mxnet {mxnet.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}"
    try:  # the ONNX backends' runtimes, where installed
        import onnxruntime
        import openvino

        text += f", onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}"
    except ImportError:
        pass
    return text


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = (
        f"_Run {dt.date.today().isoformat()} on {machine()}; {versions()}; "
        f"command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`._"
    )
    block = f"{start}\n{stamp}\n\n{body.strip()}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    BENCHMARKS.write_text(text)


def publish(name: str, text: str, record: bool = True) -> None:
    """Print a benchmark's report and, when `record`, make it the BENCHMARKS.md section `name`."""
    print(text)
    if record:
        write_section(name, text)
