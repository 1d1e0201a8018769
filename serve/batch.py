"""`gluonseg transform`: SageMaker batch transform over a local folder.

For every file X under the input folder, X.out in the output folder holds exactly the bytes that
POST /invocations would answer (the same handler makes them). A bad file is reported by name and
reason and the rest go on; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gluonseg.codecs.content_types import JPEG
from gluonseg.codecs.decode import DEFAULT_DECODE_MAX_PIXELS
from gluonseg.errors import ClientError, RequestError
from gluonseg.progress import WindowProgress
from gluonseg.util import available_cpus
from serve.handler import Context, SegmentationHandler
from serve.workers import prepare_worker_process

log = logging.getLogger("gluonseg.transform")

_worker: dict = {}


@dataclass
class TransformResult:
    source: str
    ok: bool
    reason: str = ""


def input_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith(".out"):
                yield Path(dirpath) / name


def _init_worker(
    model_dir: str,
    accept: str,
    content_type: str,
    decode_max_pixels: int,
    threads: int,
    inference: dict[str, Any],
    show_bar: bool,
    slots: Any = None,
) -> None:
    prepare_worker_process(threads)
    handler = SegmentationHandler()
    context = Context(Path(model_dir), default_accept=accept, decode_max_pixels=decode_max_pixels, **inference)
    handler.initialize(context)
    position = 1
    if slots is not None:  # a pool worker: its windows' bar takes a terminal line of its own, under the files' bar
        with slots.get_lock():
            position += slots.value
            slots.value += 1
    _worker.update(
        handler=handler, context=context, accept=accept, content_type=content_type, show=show_bar, position=position
    )


def _transform_one(job: tuple[str, str]) -> TransformResult:
    source, target = job
    handler, context = _worker["handler"], _worker["context"]
    # A picture that takes a while (slide scale, TTA) gets a bar over its windows on a terminal; elsewhere the
    # handler's log line per large picture says the same.
    with WindowProgress(_worker["show"], Path(source).name, position=_worker["position"]) as windows:
        context.progress = windows
        try:
            body = Path(source).read_bytes()
            context.request_headers = [{"Content-Type": _worker["content_type"], "Accept": _worker["accept"]}]
            ((payload, _content_type),) = handler.handle([{"body": body}], context)
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(target + ".tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, target)
            return TransformResult(source, True)
        except (RequestError, ClientError) as exc:
            return TransformResult(source, False, str(exc))
        except OSError as exc:
            return TransformResult(source, False, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            log.exception("failed on %s", source)
            return TransformResult(source, False, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            context.progress = None


def transform_folder(
    model_dir: Path,
    input_dir: Path,
    output_dir: Path,
    accept: str = "image/png",
    content_type: str = JPEG,
    jobs: int = 1,
    decode_max_pixels: int = DEFAULT_DECODE_MAX_PIXELS,
    progress: bool | None = None,
    **inference: Any,
) -> list[TransformResult]:
    """`inference`: the handler Context's backend, precision, calibration_dir, scale, native_max_pixels."""
    if not input_dir.is_dir():
        raise ClientError(f"--input {input_dir} is not a folder")
    files = list(input_files(input_dir))
    work = [(str(f), str(output_dir / f.relative_to(input_dir)) + ".out") for f in files]
    threads = max(1, available_cpus() // max(jobs, 1))  # the cores this process may use, not the machine's
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    init_args = (str(model_dir), accept, content_type, decode_max_pixels, threads, inference, show)
    results: list[TransformResult] = []
    if jobs <= 1:
        _init_worker(*init_args)
        iterator = map(_transform_one, work)
        pool = None
    else:
        fork = mp.get_context("fork")
        tqdm.get_lock()  # created before the fork, so that every worker's bar writes under the same lock
        pool = fork.Pool(jobs, initializer=_init_worker, initargs=(*init_args, fork.Value("i", 0)))
        iterator = pool.imap(_transform_one, work)
    try:
        for result in tqdm(iterator, total=len(work), disable=not show, desc="transform", unit="file"):
            if not result.ok:
                log.error("%s: %s", result.source, result.reason)
            results.append(result)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return results
