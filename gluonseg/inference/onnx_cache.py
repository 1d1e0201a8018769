"""The model folder's ONNX export for serving: found, or made at start-up and kept, so no extra step is needed.

A model folder from SageMaker (or from `gluonseg train`) has no model.onnx. The first process that loads
it with an ONNX backend exports it (gluonseg.inference.onnx_export, parity check included) and every later
load reuses the file while it still matches the parameters (model.json keeps their SHA-256). Where it goes:

1. the model folder itself, when it holds a free-shape export of these parameters (`gluonseg export
   --out MODEL_DIR` made one) or is writable;
2. else GLUONSEG_CACHE_DIR, else ~/.cache/gluonseg, under onnx/<first 16 hex digits of the SHA-256>/.

A fixed-shape export in the model folder is left alone (the server needs any shape) and a free one made
in the cache. Several gunicorn workers start at once: an exclusive lock on the destination folder lets
one export while the others wait, then read its file.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gluonseg.artifacts import ModelArtifact
from gluonseg.inference.onnx_export import ONNX_FILE, export_onnx, read_record
from gluonseg.util import params_digest

log = logging.getLogger(__name__)

LOCK_FILE = ".gluonseg-export.lock"


def cache_root() -> Path:
    return Path(os.environ.get("GLUONSEG_CACHE_DIR") or Path.home() / ".cache" / "gluonseg")


def _usable(folder: Path, digest: str) -> bool:
    record = read_record(folder)
    return bool(record and record.get("dynamic") and record.get("source", {}).get("sha256") == digest)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def export_folder(artifact: ModelArtifact, digest: str | None = None) -> Path:
    """Where the model's free-shape export is, or will be made (see the module docstring); nothing exported."""
    digest = digest or params_digest(artifact.params_path)
    folder = artifact.folder
    if _usable(folder, digest):
        return folder
    if not _writable(folder) or read_record(folder) is not None:  # read-only, or someone's fixed-shape export
        folder = cache_root() / "onnx" / digest[:16]
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def exported_model(artifact: ModelArtifact) -> Path:
    """model.onnx (free shape) of the model folder's parameters, exported now if there is none yet."""
    digest = params_digest(artifact.params_path)
    folder = export_folder(artifact, digest)
    if _usable(folder, digest):
        return folder / ONNX_FILE
    with folder_lock(folder):  # another worker may be exporting: wait for it, then reuse its file
        if not _usable(folder, digest):
            log.info("no ONNX export of %s yet: exporting to %s", artifact.params_path, folder)
            export_onnx(artifact.folder, folder)
    return folder / ONNX_FILE


@contextmanager
def folder_lock(folder: Path, name: str = LOCK_FILE) -> Iterator[None]:
    """An exclusive lock between processes (the lock file `name` in `folder`), held for the block.

    Not re-entrant, even within one process: a block must not take the same lock again.
    """
    with open(folder / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
