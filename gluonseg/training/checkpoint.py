"""Checkpoints in `/opt/ml/checkpoints` (synced to S3 by SageMaker), written so a kill at any moment
leaves either the previous complete checkpoint or the new one, never a half-written one.

Layout: `ckpt-<n>/` holds `net.params`, `trainer.states`, `state.json` and `best.params` (the
weights of the best epoch so far: a hard link to this or an earlier folder's file, so it costs no
disk and is committed together with the rest); `latest.json` names the newest complete folder and
is replaced atomically (os.replace) after the folder is fully written and fsynced. Older folders are
pruned once the new pointer is in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gluonseg.errors import AlgorithmError, ClientError
from gluonseg.files import link_or_copy

log = logging.getLogger(__name__)

POINTER = "latest.json"
KEEP = 2
WEIGHTS = "net.params"
BEST = "best.params"
REQUIRED = (WEIGHTS, "trainer.states", "state.json")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory: Path, net: Any, trainer: Any, state: dict[str, Any], is_best: bool = False) -> Path:
    """Write a complete checkpoint; return its folder. `state` must be JSON-serialisable.

    `is_best`: these weights are the best so far; otherwise the previous checkpoint's best carries over.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        previous = find_checkpoint(directory)
        serial = _next_serial(directory)
        final = directory / f"ckpt-{serial:06d}"
        tmp = directory / f".tmp-ckpt-{serial:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        net.save_parameters(str(tmp / WEIGHTS))
        trainer.save_states(str(tmp / "trainer.states"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for name in REQUIRED:
            _fsync_file(tmp / name)
        best_source = tmp / WEIGHTS if is_best else best_params(previous) if previous is not None else None
        if best_source is not None:
            link_or_copy(best_source, tmp / BEST)
        os.replace(tmp, final)
        _fsync_dir(directory)
        pointer_tmp = directory / f".{POINTER}.tmp"
        pointer_tmp.write_text(json.dumps({"folder": final.name, "epoch": state.get("epoch")}))
        _fsync_file(pointer_tmp)
        os.replace(pointer_tmp, directory / POINTER)
        _fsync_dir(directory)
    except OSError as exc:
        raise AlgorithmError(f"Cannot write a checkpoint to {directory}: {exc.strerror or exc}") from None
    _prune(directory, keep_name=final.name)
    return final


def _next_serial(directory: Path) -> int:
    serials = [int(p.name.split("-")[1]) for p in directory.glob("ckpt-*") if p.name.split("-")[1].isdigit()]
    return max(serials, default=0) + 1


def _prune(directory: Path, keep_name: str) -> None:
    folders = sorted(p for p in directory.glob("ckpt-*") if p.is_dir())
    for old in folders[:-KEEP]:
        if old.name != keep_name:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in directory.glob(".tmp-ckpt-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = directory / POINTER
    if not pointer.exists():
        return None
    try:
        folder = directory / json.loads(pointer.read_text())["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("checkpoint pointer %s is unreadable; starting from scratch", pointer)
        return None
    if not all((folder / n).exists() for n in REQUIRED):
        log.warning("checkpoint %s is incomplete; starting from scratch", folder)
        return None
    return folder


def best_params(folder: Path) -> Path | None:
    """The best epoch's weights recorded in checkpoint `folder`, or None before any epoch finished."""
    path = folder / BEST
    return path if path.exists() else None


# MXNet pickles the optimizer state (Trainer.save_states). Before it is unpickled, every global the
# stream would import is checked against this list without executing anything (pickletools only
# parses), so a tampered checkpoint in the S3 prefix cannot run code in a resumed job.
ALLOWED_GLOBALS = {
    ("mxnet.ndarray.ndarray", "NDArray"),
    ("builtins", "bytearray"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
}
ALLOWED_MODULES = ("mxnet.optimizer.optimizer", "mxnet.lr_scheduler", "gluonseg.training.schedule")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle stream would import, found by parsing it, never loading it."""
    import pickletools

    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    memo: dict[int, str] = {}
    for opcode, arg, _pos in pickletools.genops(data):
        name = opcode.name
        if name in _STRING_OPS:
            strings.append(str(arg))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE") and strings:
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = strings[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(int(arg), ""))
        elif name == "STACK_GLOBAL":
            found.add((strings[-2] if len(strings) > 1 else "", strings[-1] if strings else ""))
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.add((module, attr))
    return found


def check_optimizer_state(path: Path) -> None:
    try:
        refs = pickle_globals(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ClientError(f"checkpoint optimizer state {path} is unreadable: {exc}") from None
    bad = sorted(f"{m}.{n}" for m, n in refs if (m, n) not in ALLOWED_GLOBALS and not m.startswith(ALLOWED_MODULES))
    if bad:
        raise ClientError(
            f"checkpoint optimizer state {path} refers to {', '.join(bad)}, which a gluonseg "
            "checkpoint never does; refusing to load it (remove the checkpoint folder to start afresh)"
        )


def load_checkpoint(folder: Path, net: Any, trainer: Any, ctx: Any) -> dict[str, Any]:
    """Restore weights and optimizer state; return the saved state."""
    net.load_parameters(str(folder / WEIGHTS), ctx=ctx)
    load_trainer_states(trainer, folder / "trainer.states")
    return json.loads((folder / "state.json").read_text())


def load_trainer_states(trainer: Any, path: Path) -> None:
    """The optimizer state is a pickle: load it only after checking what it refers to."""
    check_optimizer_state(path)
    trainer.load_states(str(path))
