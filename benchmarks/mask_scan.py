"""The up-front mask scan on 10,000 generated masks: masks/s, serial vs worker processes.

Run: .venv/bin/python -m benchmarks.mask_scan [--count 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common.report import publish
from gluonseg.data.channels import pair_channel, scan_masks
from gluonseg.data.label_map import LabelMap
from gluonseg.data.synthetic import make_masks_only


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gluonseg-scan-"))
    try:
        masks = make_masks_only(root / "ann", args.count, size=args.size, classes=5, seed=0)
        # The scan reads image headers too: tiny stand-in JPEG headers would skew that, so copy masks as "images".
        (root / "img").mkdir()
        for m in masks:
            os.link(m, root / "img" / m.name)
        samples = pair_channel(root / "img", root / "ann")
        rows = []
        for workers in (1, os.cpu_count() or 1):
            start = time.perf_counter()
            scan_masks(samples, LabelMap.identity(), 5, "ann", workers=workers)
            seconds = time.perf_counter() - start
            rows.append((workers, seconds, len(samples) / seconds))
        body = ["| workers | masks | seconds | masks/s |", "| --- | --- | --- | --- |"]
        body += [f"| {w} | {len(samples)} | {s:.2f} | {r:,.0f} |" for w, s, r in rows]
        body.append("\nTarget: >= 2,000 masks/s (a 10,000-image job waits a few seconds at most).")
        publish("mask-scan", "\n".join(body))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
