"""The model folder's ONNX export for serving: found, or made at start-up and kept, so no extra step is needed.

A model folder from SageMaker (or from `gluonseg train`) has no model.onnx. The first process that loads
it with an ONNX backend exports it (gluonseg.inference.onnx_export, parity check included) and every later
load reuses the file while it still matches the parameters (model.json keeps their SHA-256). Where it goes:

1. the model folder itself, when it holds a free-shape export of these parameters (`gluonseg export
   --out MODEL_DIR` made one; the folder may then be read-only) or is writable;
2. else GLUONSEG_CACHE_DIR, else ~/.cache/gluonseg, under onnx/<first 16 hex digits of the SHA-256>/;
3. else, when that cannot be written either (a read-only root file system, a home without write access),
   a folder under the system's temporary folder, with a warning: kept only as long as that folder is.
What a process writes beside the export (the locks, `auto`'s backend-choice.json) goes to the first writable
folder of the same list (`work_folder`): model folders are often mounted read-only.

A fixed-shape export in the model folder is left alone (the server needs any shape) and a free one made
in the cache. Several gunicorn workers start at once: an exclusive lock on the destination folder lets
one export while the others wait, then read its file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
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
        return cache_folder(digest)
    return folder


def work_folder(artifact: ModelArtifact, digest: str | None = None) -> Path:
    """A folder this process may write for the model: the model folder when writable, else `cache_folder`."""
    if _writable(artifact.folder):
        return artifact.folder
    return cache_folder(digest or params_digest(artifact.params_path))


def cache_folder(digest: str) -> Path:
    """onnx/<digest[:16]> under cache_root(), made if need be; under the temporary folder where that is read-only."""
    fallback = Path(tempfile.gettempdir()) / f"gluonseg-{os.getuid()}"
    for root in (cache_root(), fallback):
        folder = root / "onnx" / digest[:16]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot use %s for the ONNX export and its records (%s)", folder, exc.strerror or exc)
            continue
        if not _writable(folder):
            log.warning("cannot use %s for the ONNX export and its records (not writable)", folder)
            continue
        if root == fallback:
            log.warning(
                "keeping the ONNX export and backend choice in %s (set GLUONSEG_CACHE_DIR to a writable folder "
                "that lasts, or ship them in the model folder: gluonseg export --model-dir M --out M)",
                folder,
            )
        return folder
    raise OSError(f"no writable folder for the ONNX export: {cache_root()} and {fallback} both refused")


def existing_export(artifact: ModelArtifact) -> Path | None:
    """model.onnx (free shape) of these parameters where one was made before, else None; nothing exported."""
    digest = params_digest(artifact.params_path)
    folder = export_folder(artifact, digest)
    return folder / ONNX_FILE if _usable(folder, digest) else None


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
