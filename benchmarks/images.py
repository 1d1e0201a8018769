"""The images: what a cold and a warm build cost (tools/images.py, as `make test` runs it), and their sizes
beside a baseline image built from another commit's Dockerfile.serve (before the runtime/development split).

Cold: the build cache, both images and the stand-in base removed first (a new machine's engine; installing
docker.io and mmdebstrap is not counted). Warm: the same build again, nothing changed. The baseline commit is
built on the same base with pip trusting the same CA bundle.

Run: .venv/bin/python -m benchmarks.images [--baseline COMMIT] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common.report import publish
from tools import images

REPO = Path(__file__).resolve().parents[1]
BASELINE_TAG = "gluonseg-serve:baseline"


def size(tag: str) -> int:
    return int(json.loads(images.docker("image", "inspect", tag).stdout)[0]["Size"])


def cold_build() -> tuple[float, dict[str, float]]:
    for tag in [image.tag for image in images.IMAGES] + [images.STANDIN_BASE]:
        images.docker("rmi", "-f", tag, check=False)
    images.docker("builder", "prune", "-af")
    start = time.monotonic()
    base = images.base_image()
    base_seconds = time.monotonic() - start
    return base_seconds, {image.tag: images.build(image, base, quiet=True) for image in images.IMAGES}


def build_baseline(commit: str, base: str) -> None:
    """Dockerfile.serve of `commit`, on `base` (its FROM line swapped), pip trusting the rig's CA bundle."""
    with tempfile.TemporaryDirectory(prefix="gluonseg-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True)
        try:
            dockerfile = (tree / "Dockerfile.serve").read_text()
            dockerfile = dockerfile.replace("FROM python:3.11-slim-bookworm AS base-cpu", f"FROM {base} AS base-cpu")
            bundle = images.ca_bundle()
            if bundle is not None:  # the baseline's Dockerfile knows no secret: the bundle goes into its stage
                shutil.copy(bundle, tree / "ca-bundle.crt")
                dockerfile = dockerfile.replace(
                    f"FROM {base} AS base-cpu",
                    f"FROM {base} AS base-cpu\nCOPY ca-bundle.crt /etc/ssl/certs/ca-certificates.crt\n"
                    "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                )
            (tree / "Dockerfile.serve").write_text(dockerfile)
            images.docker(
                "build", "--network", "host", "-q", "-f", "Dockerfile.serve", "-t", BASELINE_TAG, ".", cwd=tree
            )
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="fde10a9", help="commit whose Dockerfile.serve is the baseline")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with images.engine():
        base_seconds, cold = cold_build()
        start = time.monotonic()
        warm = {image.tag: images.build(image, images.base_image(), quiet=True) for image in images.IMAGES}
        warm_total = time.monotonic() - start
        build_baseline(args.baseline, images.base_image())
        rows = [
            "| image | cold build s | warm build s | size GB |",
            "| --- | --- | --- | --- |",
            f"| stand-in base (mmdebstrap + docker import) | {base_seconds:.0f} | 0 | "
            f"{size(images.base_image()) / 1e9:.2f} |",
        ]
        for image in images.IMAGES:
            rows.append(
                f"| {image.tag} | {cold[image.tag]:.0f} | {warm[image.tag]:.0f} | {size(image.tag) / 1e9:.2f} |"
            )
        rows.append(
            f"| {BASELINE_TAG} (`{args.baseline}`, development set included) | - | - | "
            f"{size(BASELINE_TAG) / 1e9:.2f} |"
        )
    text = "\n".join(rows) + (
        f"\n\nCold: {base_seconds + sum(cold.values()):.0f} s in all; warm: {warm_total:.0f} s. The two CPU images "
        "share every layer up to the package install, so the second cold build costs little; a change to the "
        "sources rebuilds only the layers from the package install on."
    )
    publish("images", text, record=not args.no_record)


if __name__ == "__main__":
    main()
