"""Pipe-mode training input: an augmented manifest streamed as MXNet RecordIO through a FIFO.

SageMaker creates `input/data/<channel>_<epoch>` for each epoch (`train_0`, `train_1`, ...), maybe
only after the job has started, and writes `[image][annotation PNG][image][annotation PNG]...`, one
record per attribute of the manifest line (`AttributeNames: ["source-ref", "<label>-ref"]`). The
same decoding as File mode applies, so both modes accept and refuse exactly the same data.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gluonseg.data.images import load_image, load_mask
from gluonseg.data.label_map import LabelMap
from gluonseg.errors import AlgorithmError, ClientError, list_with_limit
from gluonseg.recordio import iter_records

READ_BUFFER_BYTES = 1 << 20  # fewer read() calls per JPEG than the default 8 KiB buffer
ATTRIBUTE_ORDER = "AttributeNames ['source-ref', '<label>-ref'] in this order"
JPEG_START = b"\xff\xd8"


def pipe_path(channel_dir_root: Path, channel: str, epoch: int) -> Path:
    """`<input/data>/<channel>_<epoch>`, the FIFO SageMaker opens for one epoch of a Pipe-mode channel."""
    return Path(channel_dir_root) / f"{channel}_{epoch}"


def wait_for_pipe(path: Path, timeout_s: float = 600, poll_s: float = 0.1) -> Path:
    """Return `path` once it exists (FIFO or regular file), polling every `poll_s` seconds.

    The timeout is a ClientError: the usual cause is a channel that is not really in Pipe mode
    (File-mode data shows up as a folder `input/data/<channel>/` instead).
    """
    path = Path(path)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise AlgorithmError(f"cannot inspect the Pipe-mode input {path}: {exc.strerror}") from None
        if mode is not None:
            if stat.S_ISDIR(mode):
                raise ClientError(f"{path} is a folder; Pipe mode reads a FIFO (or a plain file) of that name")
            return path
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(poll_s, remaining))
    try:
        present = sorted(p.name for p in path.parent.iterdir())
    except OSError:
        present = []
    found = f"; {path.parent} holds: {list_with_limit(present)}" if present else f"; {path.parent} is empty or missing"
    raise ClientError(
        f"the Pipe-mode input {path} did not appear within {timeout_s:g} s{found}. Pipe-mode channels need "
        "an augmented manifest with RecordWrapperType 'RecordIO' and TrainingInputMode 'Pipe'"
    )


def _iter_pairs(path: Path) -> Iterator[tuple[str, int, bytes, bytes]]:
    """(source name, 0-based pair index, image bytes, annotation bytes) for each pair in the stream."""
    path = Path(path)
    source = path.name
    try:
        stream = open(path, "rb", buffering=READ_BUFFER_BYTES)
    except FileNotFoundError:
        raise ClientError(f"the Pipe-mode input {path} does not exist") from None
    except OSError as exc:
        raise AlgorithmError(f"cannot open the Pipe-mode input {path}: {exc.strerror}") from None
    image: bytes | None = None
    index = -1
    with stream:  # also closed when the consumer stops early, which SageMaker allows
        try:
            for index, payload in enumerate(iter_records(stream, source)):
                if image is None:
                    image = payload
                else:
                    yield source, index // 2, image, payload
                    image = None
        except OSError as exc:
            raise AlgorithmError(f"{source}: reading the Pipe-mode input {path} failed: {exc}") from None
    if image is not None:
        raise ClientError(
            f"{source}: the stream ended after an image record without its annotation (record {index}, 0-based). "
            f"Each manifest line must give two attributes, {ATTRIBUTE_ORDER}, so records come in "
            "[image][annotation] pairs"
        )


def _pair_name(source: str, pair: int) -> str:
    return f"{source}: pair {pair} (records {2 * pair} and {2 * pair + 1})"


def iter_pipe_pairs(path: Path) -> Iterator[tuple[str, bytes, bytes]]:
    """Yield `(record_name, image_bytes, mask_bytes)` for each [image][annotation] pair in the stream.

    `record_name` reads `train_0: pair 3 (records 6 and 7)`, records and pairs counted from 0. Opening
    a FIFO blocks until SageMaker opens its end for writing.
    """
    for source, pair, image_bytes, mask_bytes in _iter_pairs(path):
        yield _pair_name(source, pair), image_bytes, mask_bytes


def iter_pipe_samples(path: Path, label_map: LabelMap | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield `(record_name, image HxWx3 uint8, mask HxW uint8)`, the mask mapped through `label_map`.

    Images are decoded on their stored pixel grid (EXIF orientation not applied), as in File mode,
    because masks are drawn on that grid.
    """
    for source, pair, image_bytes, mask_bytes in _iter_pairs(path):
        name = _pair_name(source, pair)
        image = load_image(image_bytes, f"{source}: record {2 * pair} (image of pair {pair})", apply_exif=False)
        try:
            mask = load_mask(mask_bytes, f"{source}: record {2 * pair + 1} (annotation of pair {pair})")
        except ClientError as exc:
            if mask_bytes[:2] != JPEG_START:
                raise
            # A JPEG where the PNG mask belongs: almost always the two attributes swapped.
            raise ClientError(f"{exc}; this record is a JPEG: set {ATTRIBUTE_ORDER}") from None
        if image.shape[:2] != mask.shape:
            hint = ""
            if mask.shape == image.shape[1::-1]:
                hint = " (the image may carry an EXIF rotation; masks must match the stored pixel grid)"
            raise ClientError(
                f"{name}: the annotation is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}{hint}"
            )
        if label_map is not None:
            mask = label_map.apply(mask)
        yield name, image, mask
