"""Rewrite one section of BENCHMARKS.md, stamped with the machine, date, versions and command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def versions() -> str:
    import mxnet
    import numpy
    import PIL

    return f"mxnet {mxnet.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}"


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
