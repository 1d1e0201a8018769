"""MXNet RecordIO framing, checked against MXNet's own reader and writer (dmlc-core underneath)."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from gluonseg.errors import ClientError
from gluonseg.recordio import MAGIC_BYTES, encode_record, iter_records, write_record

MAGIC = 0xCED7230A  # the spec's number, spelled out independently of the module


def mx_write(path: Path, payloads: list[bytes]) -> bytes:
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for payload in payloads:
        writer.write(payload)
    writer.close()
    return path.read_bytes()


def mx_read(path: Path) -> list[bytes]:
    reader = mx.recordio.MXRecordIO(str(path), "r")
    out = []
    while (record := reader.read()) is not None:
        out.append(record)
    reader.close()
    return out


def header(cflag: int, length: int, magic: int = MAGIC) -> bytes:
    return struct.pack("<II", magic, (cflag << 29) | length)


def part(cflag: int, data: bytes) -> bytes:
    return header(cflag, len(data)) + data + b"\0" * (-len(data) % 4)


class Trickle(io.RawIOBase):
    """A pipe-like stream: at most `step` bytes per read, and no seeking."""

    def __init__(self, data: bytes, step: int = 3):
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *args):
        raise AssertionError("a FIFO cannot seek")

    def tell(self):
        raise AssertionError("a FIFO cannot tell")

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def read_all(data: bytes, name: str = "src", step: int | None = None) -> list[bytes]:
    stream = Trickle(data, step) if step else io.BytesIO(data)
    return list(iter_records(stream, name))


SMALL = [bytes(range(n)) for n in range(10)]  # lengths 0..9: every padding amount, twice


def test_encode_record_layout_matches_the_spec():
    assert encode_record(b"abcde") == struct.pack("<II", MAGIC, 5) + b"abcde" + b"\0\0\0"
    assert encode_record(b"") == struct.pack("<II", MAGIC, 0)
    assert encode_record(b"abcd") == struct.pack("<II", MAGIC, 4) + b"abcd"
    for payload in SMALL:
        assert len(encode_record(payload)) % 4 == 0


def test_our_bytes_equal_mxnet_bytes(tmp_path):
    payloads = SMALL + [os.urandom(100_003)]
    raw = mx_write(tmp_path / "a.rec", payloads)
    assert raw == b"".join(encode_record(p) for p in payloads)
    buf = io.BytesIO()
    for p in payloads:
        write_record(buf, p)
    assert buf.getvalue() == raw


def test_mxnet_written_read_by_us(tmp_path):
    rng = np.random.default_rng(0)
    large = rng.integers(0, 256, 3_000_001, dtype=np.uint8).tobytes()
    payloads = SMALL + [large, b"tail"]
    raw = mx_write(tmp_path / "a.rec", payloads)
    assert read_all(raw) == payloads
    assert read_all(raw, step=997) == payloads  # short reads change nothing


def test_ours_written_read_by_mxnet(tmp_path):
    payloads = SMALL + [os.urandom(2_000_001), MAGIC_BYTES * 3, b"x" + MAGIC_BYTES + b"yz" + MAGIC_BYTES]
    path = tmp_path / "ours.rec"
    with open(path, "wb") as f:
        for p in payloads:
            write_record(f, p)
    assert mx_read(path) == payloads


@pytest.mark.parametrize(
    "payload",
    [
        b"abcd" + MAGIC_BYTES + b"efgh",  # aligned: split into start + end
        MAGIC_BYTES,  # nothing but the magic: two empty parts
        MAGIC_BYTES + MAGIC_BYTES + b"12345",  # start, empty middle, end with padding
        b"abcd" + MAGIC_BYTES + b"xyz" + MAGIC_BYTES + b"q" + MAGIC_BYTES,  # unaligned copy stays inside a part
        b"ab" + MAGIC_BYTES + b"cd",  # unaligned only: written whole
    ],
)
def test_multi_part_records_written_by_mxnet(tmp_path, payload):
    raw = mx_write(tmp_path / "m.rec", [b"before", payload, b"after"])
    aligned = any(payload[i : i + 4] == MAGIC_BYTES for i in range(0, len(payload) - 3, 4))
    # dmlc splits at each aligned magic, so the file really holds a start part (flag 1) when one is aligned
    first_part_len = payload.find(MAGIC_BYTES) if aligned else None
    if aligned:
        assert header(1, first_part_len) in raw
    else:
        assert header(0, len(payload)) in raw
    assert read_all(raw) == [b"before", payload, b"after"]
    assert read_all(raw, step=5) == [b"before", payload, b"after"]


def test_hand_built_multi_part_with_padded_parts_agrees_with_mxnet(tmp_path):
    # dmlc's reader pads every part; build parts of odd length and compare with MXNet's own answer
    raw = part(0, b"one") + part(1, b"abcde") + part(2, b"f") + part(2, b"") + part(3, b"gh") + part(0, b"two")
    path = tmp_path / "h.rec"
    path.write_bytes(raw)
    expected = [b"one", b"abcde" + MAGIC_BYTES + b"f" + MAGIC_BYTES + MAGIC_BYTES + b"gh", b"two"]
    assert mx_read(path) == expected
    assert read_all(raw, step=1) == expected


def test_empty_stream_has_no_records():
    assert read_all(b"") == []


def test_write_refuses_a_payload_over_the_29_bit_limit():
    too_big = memoryview(np.zeros(1 << 29, dtype=np.uint8))  # calloc'd: no pages touched
    with pytest.raises(ClientError, match="at most 536870911 bytes"):
        encode_record(too_big)
    with pytest.raises(ClientError, match="at most 536870911 bytes"):
        write_record(io.BytesIO(), too_big)


GOOD = encode_record(b"first") + encode_record(b"second!")  # 16 + 16 bytes


def test_bad_magic_names_source_record_and_offset():
    with pytest.raises(ClientError) as err:
        read_all(GOOD + header(0, 4, magic=0x12345678) + b"abcd", name="train_0")
    text = str(err.value)
    assert text.startswith("train_0: record 2 (0-based, at byte offset 32): ")
    assert "does not start with the magic number 0xCED7230A" in text
    assert "0x12345678" in text


def test_bad_magic_on_plain_image_bytes():
    # what a channel without RecordWrapperType 'RecordIO' would send: the raw JPEG
    with pytest.raises(ClientError, match=r"^validation_0: record 0 \(0-based.*magic number.*RecordIO"):
        read_all(b"\xff\xd8\xff\xe0" + b"\0" * 20, name="validation_0")


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_truncated_header(cut):
    raw = GOOD + encode_record(b"third")[:cut]
    expected = rf"^src: record 2 \(0-based, at byte offset 32\): .*record header \({cut} of 8"
    with pytest.raises(ClientError, match=expected):
        read_all(raw, step=2)


@pytest.mark.parametrize("keep", [0, 3, 5, 6])  # none, part of the payload, payload without all its padding
def test_truncated_payload(keep):
    raw = GOOD + (header(0, 5) + b"abcde\0\0\0")[: 8 + keep]
    with pytest.raises(ClientError) as err:
        read_all(raw)
    text = str(err.value)
    assert text.startswith("src: record 2 (0-based, at byte offset 32): the stream ended inside a record")
    assert f"5 bytes of payload (8 with padding) but only {keep} followed" in text


def test_records_yielded_before_an_error_are_kept():
    got = []
    with pytest.raises(ClientError):
        for record in iter_records(io.BytesIO(GOOD + b"junk"), "src"):
            got.append(record)
    assert got == [b"first", b"second!"]


@pytest.mark.parametrize(
    "tail, flag_text, index",
    [
        (part(2, b"mid"), "a middle part (flag 2) with no start part", 2),
        (part(3, b"end"), "an end part (flag 3) with no start part", 2),
        (part(1, b"a") + part(1, b"b"), "a start part (flag 1) inside a multi-part record", 2),
        (part(1, b"a") + part(2, b"b") + part(0, b"c"), "a whole part (flag 0) inside a multi-part record", 2),
        (part(0, b"z") + part(1, b"a") + part(0, b"c"), "a whole part (flag 0) inside a multi-part record", 3),
    ],
)
def test_bad_continuation_sequence(tail, flag_text, index):
    with pytest.raises(ClientError) as err:
        read_all(GOOD + tail, name="train_3")
    text = str(err.value)
    assert text.startswith(f"train_3: record {index} (0-based")
    assert "bad continuation sequence" in text
    assert flag_text in text


@pytest.mark.parametrize("cflag", [4, 5, 7])
def test_unknown_continuation_flag(cflag):
    with pytest.raises(ClientError, match=rf"^src: record 2 .*unknown continuation flag {cflag}"):
        read_all(GOOD + header(cflag, 4) + b"abcd")


def test_stream_ending_inside_a_multi_part_record():
    with pytest.raises(ClientError) as err:
        read_all(GOOD + part(1, b"abcd") + part(2, b"efgh"), name="train_1")
    text = str(err.value)
    assert text.startswith("train_1: record 2 (0-based")
    assert "ended inside a multi-part record, after 2 part(s)" in text
