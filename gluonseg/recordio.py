"""MXNet RecordIO framing in pure Python: Pipe-mode training input and recordio-protobuf responses.

A record on the wire is::

    uint32 magic 0xCED7230A | uint32 (cflag << 29 | length) | payload | zero pad to a multiple of 4

all little-endian. dmlc-core's writer splits a payload at every 4-byte-aligned copy of the magic
number and drops that copy; the parts carry cflag 1 (start), 2 (middle), 3 (end), and a reader
joins them with the magic put back. A record with cflag 0 is whole.

No MXNet import here: the HTTP server writes responses with this module, and a FIFO must be read
with plain sequential reads (no seek, short reads allowed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from gluonseg.errors import ClientError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
HEADER = struct.Struct("<II")

CFLAG_WHOLE = 0
CFLAG_START = 1
CFLAG_MIDDLE = 2
CFLAG_END = 3

_FLAG_NAMES = {CFLAG_WHOLE: "a whole", CFLAG_START: "a start", CFLAG_MIDDLE: "a middle", CFLAG_END: "an end"}
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")


def _padding(length: int) -> int:
    return -length % 4


def encode_record(payload: bytes) -> bytes:
    """One whole record (cflag 0) holding `payload`.

    Written as a single part even when the payload holds the magic number, as the SageMaker SDK's
    writer does: its reader (`sagemaker.amazon.common.read_recordio`) does not join parts, while
    MXNet's reader accepts a whole record with any content.
    """
    length = len(payload)
    if length > MAX_LENGTH:
        raise ClientError(f"a RecordIO record holds at most {MAX_LENGTH} bytes; this payload is {length} bytes")
    return b"".join((HEADER.pack(MAGIC, length), bytes(payload), _PAD[_padding(length)]))


def write_record(f: BinaryIO, payload: bytes) -> None:
    """Write one whole record to `f` (see `encode_record`)."""
    length = len(payload)
    if length > MAX_LENGTH:
        raise ClientError(f"a RecordIO record holds at most {MAX_LENGTH} bytes; this payload is {length} bytes")
    f.write(HEADER.pack(MAGIC, length))
    f.write(payload)  # not joined first: responses can be hundreds of MB
    f.write(_PAD[_padding(length)])


def _read_exact(f: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes; fewer only at end of stream. Pipes and raw files may return short reads."""
    first = f.read(size)
    if not first or len(first) == size:
        return first or b""
    chunks = [first]
    got = len(first)
    while got < size:
        chunk = f.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def iter_records(f: BinaryIO, source_name: str) -> Iterator[bytes]:
    """Yield each record's payload (multi-part records joined) from a sequential stream.

    Errors are ClientErrors naming `source_name` and the record's 0-based index among the records
    yielded so far, plus the byte offset of the part that failed.
    """
    index = 0
    offset = 0
    parts: list[bytes] | None = None  # the parts of a multi-part record still open

    def fail(what: str, at: int) -> ClientError:
        return ClientError(f"{source_name}: record {index} (0-based, at byte offset {at}): {what}")

    while True:
        header = _read_exact(f, HEADER.size)
        if not header:
            if parts is not None:
                raise fail(
                    f"the stream ended inside a multi-part record, after {len(parts)} part(s) and before its end part",
                    offset,
                )
            return
        if len(header) < HEADER.size:
            raise fail(
                f"the stream ended inside a record header ({len(header)} of {HEADER.size} bytes); "
                "the data was cut short",
                offset,
            )
        magic, word = HEADER.unpack(header)
        if magic != MAGIC:
            raise fail(
                f"The RecordIO header does not start with the magic number 0x{MAGIC:08X} (found 0x{magic:08X}); "
                "the data is not MXNet RecordIO or is corrupt (Pipe-mode channels need RecordWrapperType 'RecordIO')",
                offset,
            )
        cflag = word >> LENGTH_BITS
        length = word & MAX_LENGTH
        padded = length + _padding(length)
        payload = _read_exact(f, length)
        pad = _read_exact(f, padded - length) if len(payload) == length else b""
        if len(payload) + len(pad) < padded:
            raise fail(
                f"the stream ended inside a record: the header announces {length} bytes of payload "
                f"({padded} with padding) but only {len(payload) + len(pad)} followed; the data was cut short",
                offset,
            )
        part_offset = offset
        offset += HEADER.size + padded

        if cflag == CFLAG_WHOLE and parts is None:
            yield payload
            index += 1
        elif cflag == CFLAG_START and parts is None:
            parts = [payload]
        elif cflag == CFLAG_MIDDLE and parts is not None:
            parts.append(payload)
        elif cflag == CFLAG_END and parts is not None:
            parts.append(payload)
            yield MAGIC_BYTES.join(parts)
            parts = None
            index += 1
        elif cflag not in _FLAG_NAMES:
            raise fail(f"unknown continuation flag {cflag} in the record header (expected 0, 1, 2 or 3)", part_offset)
        elif parts is None:
            raise fail(
                f"bad continuation sequence: {_FLAG_NAMES[cflag]} part (flag {cflag}) with no start part before it",
                part_offset,
            )
        else:
            raise fail(
                f"bad continuation sequence: {_FLAG_NAMES[cflag]} part (flag {cflag}) inside a multi-part record "
                f"that has {len(parts)} part(s) and no end part yet",
                part_offset,
            )
