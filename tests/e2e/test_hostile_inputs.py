"""The real scoring server (gunicorn + Flask, 2 workers, loopback) under hostile input.

A corpus made here (broken, lying, huge-declaring and odd-mode images, over-limit bodies, bad headers,
malformed HTTP framing) and a few thousand property-based cases (hypothesis: random bodies, mutated
valid JPEG/PNG bytes, random Content-Type/Accept) all go to one server. Every answer must be a 200
that decodes to the right size or a 4xx with a JSON reason, never a 5xx; no answer may carry a
secret from the server's environment or a host path; no worker may die. A last test kills a worker
of a second server with SIGKILL under load: gunicorn replaces it and the other requests succeed.

Expected statuses of generated cases come from the decoder and negotiation functions the server
uses, run here in the test process, so the test checks that every case reaches the client as that
function decided (400/406/413/415, or a mask of the decoded size) whatever the bytes.
"""

from __future__ import annotations

import collections
import io
import os
import re
import signal
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from benchmarks.common.server import Server
from gluonseg.codecs.content_types import PNG, check_request_type, choose_accept
from gluonseg.codecs.decode import decode_image, decode_probabilities
from gluonseg.errors import RequestError
from serve.app import status_of as http_status

CLASSES = 4  # the trained_model_dir model
LIMIT = 6 * 1024 * 1024  # SAGEMAKER_MAX_PAYLOAD_IN_MB default
ALLOWED = {200, 400, 406, 413, 415}
SECRET = "gluonseg-test-secret-7f3c9a1e"  # in the server's environment; must never reach a client
REQUEST_TYPES = ["image/jpeg", "image/png", "application/x-image"]
RESPONSE_TYPES = ["image/png", "application/x-recordio-protobuf", "application/x-protobuf"]
HYPOTHESIS = {"deadline": None, "database": None, "derandomize": True, "print_blob": False}
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


@pytest.fixture(scope="module")
def server(trained_model_dir):
    srv = Server(trained_model_dir, workers=2, AWS_SECRET_ACCESS_KEY=SECRET).start()
    srv.initial_workers = sorted(srv.worker_pids())
    srv.host_paths = [str(trained_model_dir), str(trained_model_dir.parent)]
    srv.counts = collections.Counter()
    yield srv
    srv.stop()


# -- image builders ---------------------------------------------------------------------------


def encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header declares width x height RGB pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def with_png_size(data: bytes, width: int, height: int, fix_crc: bool = True) -> bytes:
    """The PNG with its IHDR width/height rewritten (and its CRC recomputed, or left stale)."""
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = None if fix_crc else struct.unpack(">I", data[29:33])[0]
    return data[:8] + png_chunk(b"IHDR", bytes(ihdr[4:]), crc) + data[33:]


def sof_offset(data: bytes) -> int | None:
    """Offset of the height field of the JPEG's start-of-frame segment (width follows)."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return i + 5
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    at = sof_offset(data)
    assert at is not None
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


def exif_rotated(orientation: int, width: int = 20, height: int = 8) -> bytes:
    img = noise(width, height, seed=orientation)
    exif = img.getexif()
    exif[0x0112] = orientation
    return encoded(img, "JPEG", exif=exif)


def sixteen_bit_png(channels: int) -> bytes:
    rng = np.random.default_rng(channels)
    shape = (9, 11) if channels == 1 else (9, 11, channels)
    ok, data = cv2.imencode(".png", rng.integers(0, 65536, shape).astype(np.uint16))
    assert ok
    return data.tobytes()


JPEG_RGB = encoded(noise(32, 24), "JPEG")
PNG_RGB = encoded(noise(32, 24), "PNG")

# Tiny valid images: the seeds of the mutation strategy (all well under one 64x64 tile).
SEEDS = [
    JPEG_RGB,
    PNG_RGB,
    encoded(noise(9, 5, 1).convert("L"), "JPEG"),
    encoded(noise(12, 7, 2), "JPEG", progressive=True),
    encoded(noise(6, 6, 3).convert("CMYK"), "JPEG"),
    exif_rotated(6, 10, 4),
    encoded(noise(7, 5, 4).convert("P"), "PNG"),
    encoded(noise(6, 6, 5).convert("P"), "PNG", transparency=0),
    encoded(noise(5, 5, 6).convert("RGBA"), "PNG"),
    encoded(noise(5, 4, 7).convert("LA"), "PNG"),
    encoded(noise(8, 8, 8).convert("1"), "PNG"),
    encoded(noise(40, 1, 9), "PNG"),
    sixteen_bit_png(1),
    sixteen_bit_png(3),
]


# -- the oracle -------------------------------------------------------------------------------


@dataclass
class Expected:
    status: int
    accept: str | None = None
    size: tuple[int, int] | None = None  # (height, width) of the mask for a 200


def expected(body: bytes, content_type: str | None, accept: str | None) -> Expected:
    """What the server must answer, decided in the order it decides: size, media types, pixels."""
    if len(body) > LIMIT:
        return Expected(413)
    try:
        check_request_type(content_type)
        response_type = choose_accept(accept, PNG)
        image = decode_image(body, content_type)
    except RequestError as exc:
        return Expected(http_status(exc))
    return Expected(200, response_type, image.shape[:2])


def check_answer(srv: Server, r: requests.Response, want: Expected | None = None) -> None:
    """The invariants of every answer; the exact status and mask size when `want` is given."""
    srv.counts[r.status_code] += 1
    assert r.status_code in ALLOWED, (r.status_code, r.content[:300])
    if want is not None:
        assert r.status_code == want.status, (r.status_code, want, r.content[:300])
    if r.status_code == 200:
        media = r.headers["Content-Type"]
        assert media in RESPONSE_TYPES
        if want is not None:
            assert media == want.accept
        if media == "image/png":
            img = Image.open(io.BytesIO(r.content))
            img.load()
            assert img.mode == "P"
            shape = (img.height, img.width)
            assert np.asarray(img).max() < CLASSES
        else:
            probabilities = decode_probabilities(r.content)
            assert probabilities.shape[0] == CLASSES and np.isfinite(probabilities).all()
            shape = probabilities.shape[1:]
        if want is not None:
            assert shape == want.size
        return
    assert r.headers["Content-Type"] == "application/json", r.content[:300]
    reason = r.json()["error"]
    assert isinstance(reason, str) and reason.strip()
    for leak in (SECRET, "Traceback", *srv.host_paths):
        assert leak not in r.text


def post(srv: Server, body, content_type: str | None = "image/jpeg", accept: str | None = None, **kwargs):
    # None removes the header outright (requests would otherwise send its own Accept: */*).
    headers = {"Content-Type": content_type, "Accept": accept}
    return requests.post(srv.url + "/invocations", data=body, headers=headers, timeout=120, **kwargs)


def send(srv: Server, body: bytes, content_type: str | None, accept: str | None) -> None:
    check_answer(srv, post(srv, body, content_type, accept), expected(body, content_type, accept))


def raw_exchange(srv: Server, data: bytes, close_write: bool = False) -> bytes:
    """Bytes straight onto the socket (for framing requests can not send); the whole answer back."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- the corpus -------------------------------------------------------------------------------

# (name, body, Content-Type, Accept, status, mask (height, width) for a 200)
CORPUS = [
    ("random bytes", np.random.default_rng(0).bytes(5000), "image/jpeg", None, 400, None),
    ("zero bytes", b"\0" * 4096, "image/jpeg", None, 400, None),
    ("empty body", b"", "image/jpeg", None, 400, None),
    ("JPEG magic then junk", b"\xff\xd8\xff" + b"\0" * 100, "image/jpeg", None, 400, None),
    ("PNG magic then junk", b"\x89PNG\r\n\x1a\n" + b"junk" * 20, "image/png", None, 400, None),
    ("truncated JPEG", JPEG_RGB[: len(JPEG_RGB) // 2], "image/jpeg", None, 400, None),
    ("JPEG without its EOI", JPEG_RGB[:-2], "image/jpeg", None, 400, None),
    ("truncated PNG", PNG_RGB[: len(PNG_RGB) // 2], "image/png", None, 400, None),
    ("PNG IHDR with a stale CRC", with_png_size(PNG_RGB, 33, 24, fix_crc=False), "image/png", None, 400, None),
    ("PNG 0x0", png_declaring(0, 0), "image/png", None, 400, None),
    ("JPEG declaring 0x0", with_jpeg_size(JPEG_RGB, 0, 0), "image/jpeg", None, 400, None),
    ("JPEG whose header lies: 40000x40000", with_jpeg_size(JPEG_RGB, 40000, 40000), "image/jpeg", None, 413, None),
    ("JPEG whose header lies: 65535x65535", with_jpeg_size(JPEG_RGB, 65535, 65535), "image/jpeg", None, 413, None),
    ("PNG bomb 100000x100000 in 70 bytes", png_declaring(100_000, 100_000), "image/png", None, 413, None),
    ("PNG bomb 7000x7000 (under PIL's cap)", png_declaring(7000, 7000), "image/png", None, 413, None),
    ("PNG bomb 2^31-1 square", png_declaring(2**31 - 1, 2**31 - 1), "image/png", None, 413, None),
    ("PNG declaring 3000x2000, no data", png_declaring(3000, 2000), "image/png", None, 400, None),
    ("GIF", encoded(noise(8, 8), "GIF"), "image/jpeg", None, 400, None),
    ("BMP", encoded(noise(8, 8), "BMP"), "image/jpeg", None, 400, None),
    ("TIFF", encoded(noise(8, 8), "TIFF"), "image/jpeg", None, 400, None),
    ("WEBP", encoded(noise(8, 8), "WEBP"), "image/jpeg", None, 400, None),
    ("JSON body", b'{"instances": [1, 2, 3]}', "image/jpeg", None, 400, None),
    ("1x1 JPEG", encoded(noise(1, 1), "JPEG"), "image/jpeg", None, 200, (1, 1)),
    ("1x1 PNG", encoded(noise(1, 1), "PNG"), "image/png", None, 200, (1, 1)),
    ("1x20000 PNG", encoded(noise(20000, 1), "PNG"), "image/png", None, 200, (1, 20000)),
    ("20000x1 PNG, protobuf", encoded(noise(1, 20000), "PNG"), "image/png", "application/x-protobuf", 200, (20000, 1)),
    ("16-bit gray PNG", sixteen_bit_png(1), "image/png", None, 200, (9, 11)),
    ("16-bit RGB PNG", sixteen_bit_png(3), "image/png", None, 200, (9, 11)),
    ("16-bit RGBA PNG", sixteen_bit_png(4), "image/png", None, 200, (9, 11)),
    ("palette PNG", encoded(noise(30, 20).convert("P"), "PNG"), "image/png", None, 200, (20, 30)),
    ("palette PNG + tRNS", SEEDS[7], "image/png", None, 200, (6, 6)),
    ("1-bit PNG", SEEDS[10], "image/png", None, 200, (8, 8)),
    ("LA PNG", SEEDS[9], "image/png", None, 200, (4, 5)),
    ("CMYK JPEG", encoded(noise(30, 20).convert("CMYK"), "JPEG"), "image/jpeg", None, 200, (20, 30)),
    ("progressive JPEG", encoded(noise(30, 20), "JPEG", progressive=True), "image/jpeg", None, 200, (20, 30)),
    ("gray JPEG", encoded(noise(30, 20).convert("L"), "JPEG"), "image/jpeg", None, 200, (20, 30)),
    ("EXIF orientation 3 (180)", exif_rotated(3), "image/jpeg", None, 200, (8, 20)),
    ("EXIF orientation 6 (90 CW)", exif_rotated(6), "image/jpeg", None, 200, (20, 8)),
    ("EXIF orientation 8 (90 CCW)", exif_rotated(8), "image/jpeg", None, 200, (20, 8)),
    ("EXIF orientation 99 (invalid)", exif_rotated(99), "image/jpeg", None, 200, (8, 20)),
    ("JPEG labelled image/png", JPEG_RGB, "image/png", None, 200, (24, 32)),
    ("JPEG header lies, 300x200", with_jpeg_size(JPEG_RGB, 300, 200), "image/jpeg", None, 200, (200, 300)),
    ("Content-Type in capitals, with parameters", JPEG_RGB, "IMAGE/JPEG; charset=binary", None, 200, (24, 32)),
    ("missing Content-Type", JPEG_RGB, None, None, 415, None),
    ("empty Content-Type", JPEG_RGB, "", None, 415, None),
    ("Content-Type text/plain", JPEG_RGB, "text/plain", None, 415, None),
    ("Content-Type image/gif", JPEG_RGB, "image/gif", None, 415, None),
    ("Content-Type ;;;", JPEG_RGB, ";;;", None, 415, None),
    ("Content-Type latin-1 junk", JPEG_RGB, "image/jpeg\xff\xfe", None, 415, None),
    ("Accept text/csv", JPEG_RGB, "image/jpeg", "text/csv", 406, None),
    ("Accept image/png;q=0", JPEG_RGB, "image/jpeg", "image/png;q=0", 406, None),
    ("Accept */*;q=0", JPEG_RGB, "image/jpeg", "*/*;q=0", 406, None),
    ("Accept junk", JPEG_RGB, "image/jpeg", "!!!, ???", 406, None),
    ("Accept in capitals", JPEG_RGB, "image/jpeg", "IMAGE/PNG", 200, (24, 32)),
    ("Accept with a bad q", JPEG_RGB, "image/jpeg", "application/x-protobuf;q=abc", 200, (24, 32)),
    ("Accept preferring protobuf", JPEG_RGB, "image/jpeg", "image/png;q=0.1, application/*", 200, (24, 32)),
    ("bad Content-Type wins over a bad body", b"junk", "text/plain", None, 415, None),
]


@pytest.mark.parametrize(
    "body, content_type, accept, status, size", [case[1:] for case in CORPUS], ids=[case[0] for case in CORPUS]
)
def test_corpus(server, body, content_type, accept, status, size):
    want = expected(body, content_type, accept)
    assert (want.status, want.size) == (status, size)  # the corpus entry says what the decoder says
    check_answer(server, post(server, body, content_type, accept), want)


def test_bomb_answers_from_the_header_alone(server):
    start = time.monotonic()
    r = post(server, png_declaring(100_000, 100_000), "image/png")
    check_answer(server, r, Expected(413))
    assert "pixels" in r.json()["error"]
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("content_type", ["image/jpeg", None, "text/plain"])
def test_body_over_the_limit_with_content_length(server, content_type):
    r = post(server, b"\xff" * (LIMIT + 1), content_type)
    check_answer(server, r, Expected(413))
    assert "limit" in r.json()["error"]


def test_body_over_the_limit_without_content_length(server):
    def chunks():
        for _ in range(LIMIT // (1 << 20) + 1):
            yield b"\0" * (1 << 20)

    r = post(server, chunks(), "image/jpeg")
    assert "Content-Length" not in r.request.headers and r.request.headers["Transfer-Encoding"] == "chunked"
    check_answer(server, r, Expected(413))


def test_chunked_body_under_the_limit_is_scored(server):
    r = post(server, iter([JPEG_RGB[:100], JPEG_RGB[100:]]), "image/jpeg")
    check_answer(server, r, Expected(200, PNG, (24, 32)))


HEAD = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"


@pytest.mark.parametrize(
    "data, close_write",
    [
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n", False),  # chunk size not hex
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", False),  # chunk without CRLF
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc", True),  # client stops mid-chunk
        (HEAD + b"Content-Length: 1000\r\n\r\nabc", True),  # client stops mid-body
        (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", True),
    ],
    ids=["bad chunk size", "chunk without terminator", "stops mid-chunk", "stops mid-body", "unknown coding"],
)
def test_malformed_body_framing_is_400_json(server, data, close_write):
    answer = raw_exchange(server, data, close_write)
    if close_write and answer == b"":
        # A client that shuts its side mid-body has stopped listening too: nginx logs a 400 and closes
        # without an answer; no worker ever saw the request.
        assert requests.get(server.url + "/ping", timeout=2).status_code == 200
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 400, answer[:300]
    assert b"application/json" in head and b'"error"' in body and SECRET.encode() not in body


@pytest.mark.parametrize(
    "data",
    [
        HEAD + b"Content-Length: abc\r\n\r\n",
        HEAD + b"Content-Length: -5\r\n\r\n",
        HEAD + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /invocations HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    ],
    ids=[
        "Content-Length abc",
        "Content-Length -5",
        "Content-Length and chunked",
        "space in a header name",
        "binary request line",
        "request line over 8190 bytes",
        "200 header fields",
    ],
)
def test_broken_http_is_refused_by_nginx_with_a_json_4xx(server, data):
    # These never reach a worker: nginx refuses them, with the same JSON body as the app's errors.
    answer = raw_exchange(server, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert 400 <= status_of(answer) < 500, answer[:300]
    assert b"application/json" in head.lower() and b'"error"' in body, answer[:300]
    assert SECRET.encode() not in answer


@pytest.mark.parametrize(
    "method, path, status",
    # nginx refuses a path that climbs above the root as a bad request, before any route is looked up.
    [("GET", "/invocations", 405), ("PUT", "/ping", 405), ("GET", "/../../etc/passwd", 400), ("POST", "/x", 404)],
)
def test_other_routes_and_methods_are_json_4xx(server, method, path, status):
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(server, request.encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == status and b"application/json" in head and b'"error"' in body
    assert b"root:" not in body


def test_first_request_after_gluoncv_import_is_judged_like_any_other():
    """`import gluoncv` turns PIL's LOAD_TRUNCATED_IMAGES on; the decoder must not open a PNG under it."""
    bad_text_chunk = png_chunk(b"tEXt", b"a\0b", crc=0)
    body = PNG_RGB[:33] + bad_text_chunk + PNG_RGB[33:]
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(RequestError):
            decode_image(body, "image/png")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


# -- property-based cases ---------------------------------------------------------------------

MAGIC = [b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF", b"{"]
# Header text: printable latin-1 without CR/LF (which no client can put in a header value).
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=("Cc",)), max_size=40
).map(str.lstrip)  # requests refuses a value that starts with white space


def _weird_case(draw, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips))


@st.composite
def media_header(draw, known: list[str]) -> str | None:
    kind = draw(st.sampled_from(["known", "cased", "params", "list", "junk", "none", "empty"]))
    if kind == "none":
        return None
    if kind == "empty":
        return ""
    if kind == "junk":
        return draw(header_text)
    media = draw(st.sampled_from([*known, "*/*", "image/*", "application/*", "text/html", "image/gif"]))
    if kind == "cased":
        return _weird_case(draw, media)
    if kind == "params":
        param = draw(st.sampled_from(["q=0", "q=0.5", "q=1", "q=abc", "q=-3", "charset=utf-8", "", "=", "q"]))
        return f"{media}{draw(st.sampled_from([';', ' ; ', ';;']))}{param}"
    others = draw(st.lists(st.sampled_from([*known, "*/*", "text/csv", "image/png;q=0"]), max_size=3))
    return ", ".join([media, *others])


content_types = media_header(REQUEST_TYPES)
accepts = media_header(RESPONSE_TYPES)
good_content_types = st.sampled_from([*REQUEST_TYPES, "IMAGE/JPEG", "image/png; charset=binary"])
good_accepts = st.sampled_from([None, "*/*", *RESPONSE_TYPES, "image/*;q=0.2, application/x-protobuf"])

# Rewritten frame sizes stay cheap to decode: both sides small, both past the pixel limit, or one past
# 65,000 with the other at most 7 (under 0.5 MP either way; the default limit is 36 MP).
SMALL_SIDES = [0, 1, 2, 7, 16, 65, 300]
frame_sizes = st.one_of(
    st.tuples(st.sampled_from(SMALL_SIDES), st.sampled_from(SMALL_SIDES)),
    st.tuples(st.integers(40_000, 65_535), st.integers(40_000, 65_535)),
    st.tuples(st.integers(40_000, 65_535), st.integers(0, 7)),
    st.tuples(st.integers(0, 7), st.integers(40_000, 65_535)),
)


@st.composite
def mutated_image(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "resize", "chunk"]))
        n = len(data)
        if op == "flip" and n:
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            data = data[: draw(st.integers(0, n))]
        elif op == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "resize":
            width, height = draw(frame_sizes)
            raw = bytes(data)
            if raw.startswith(b"\x89PNG") and len(raw) >= 33 and raw[12:16] == b"IHDR":
                data = bytearray(with_png_size(raw, width, height, fix_crc=draw(st.booleans())))
            elif raw.startswith(b"\xff\xd8") and sof_offset(raw) is not None and sof_offset(raw) + 4 <= len(raw):
                data = bytearray(with_jpeg_size(raw, width, height))
        elif op == "chunk":
            payload = draw(st.binary(max_size=200))
            if bytes(data).startswith(b"\x89PNG") and n >= 33:
                kind = draw(st.sampled_from([b"tEXt", b"zTXt", b"iCCP", b"eXIf", b"PLTE", b"tRNS", b"IDAT", b"gAMA"]))
                crc = None if draw(st.booleans()) else 0
                data[33:33] = png_chunk(kind, payload, crc)
            elif n >= 2:
                marker = draw(st.sampled_from([0xE0, 0xE1, 0xE2, 0xFE, 0xDB, 0xC4, 0xDD, 0xC0]))
                length = draw(st.sampled_from([len(payload) + 2, 0, 1, 0xFFFF]))
                data[2:2] = bytes([0xFF, marker]) + struct.pack(">H", length) + payload
    return bytes(data)


random_bodies = st.one_of(
    st.binary(max_size=600),
    st.tuples(st.sampled_from(MAGIC), st.binary(max_size=400)).map(lambda t: t[0] + t[1]),
)


@settings(max_examples=1500, suppress_health_check=SLOW_OK, **HYPOTHESIS)
@given(body=random_bodies, content_type=content_types, accept=accepts)
def test_random_bodies_and_headers(server, body, content_type, accept):
    send(server, body, content_type, accept)


@settings(max_examples=1500, suppress_health_check=SLOW_OK, **HYPOTHESIS)
@given(body=mutated_image(), content_type=good_content_types, accept=good_accepts)
def test_mutated_images(server, body, content_type, accept):
    send(server, body, content_type, accept)


@settings(max_examples=500, suppress_health_check=SLOW_OK, **HYPOTHESIS)
@given(body=st.sampled_from(SEEDS), content_type=content_types, accept=accepts)
def test_valid_images_with_random_headers(server, body, content_type, accept):
    send(server, body, content_type, accept)


def test_ping_and_the_same_workers_after_everything_above(server):
    # Runs after every case above (pytest keeps file order): all of them went to these two workers.
    print(f"answers by status: {dict(sorted(server.counts.items()))}")  # shown with -s
    # Every outcome was reached, and thousands of times in all.
    assert sum(server.counts.values()) >= 3000 and server.counts[200] >= 100, server.counts
    assert all(server.counts[status] >= 5 for status in ALLOWED), server.counts
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    assert sorted(server.worker_pids()) == server.initial_workers
    log = server.output()
    for sign in ("WORKER TIMEOUT", "Worker exiting", "was sent", "internal error", "Traceback", SECRET):
        assert sign not in log, sign
    assert not re.search(r'HTTP/1\.[01]" 5\d\d ', log)  # no 5xx in gunicorn's access log


# -- a worker killed under load ---------------------------------------------------------------


@dataclass
class Outcome:
    start: float
    end: float
    status: int | str


def test_sigkill_of_a_worker_under_load_is_survived(trained_model_dir):
    srv = Server(trained_model_dir, workers=2).start()
    outcomes: list[Outcome] = []
    stop = threading.Event()
    body = encoded(noise(48, 40, 11), "JPEG")

    def client() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status: int | str = post(srv, body, "image/jpeg").status_code
            except requests.ConnectionError as exc:
                status = type(exc).__name__
            outcomes.append(Outcome(start, time.monotonic(), status))

    def wait_for(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{srv.output()[-3000:]}"
            time.sleep(0.1)

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        before = sorted(srv.worker_pids())
        assert len(before) == 2
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 20, 120, "20 requests")
        victim, survivor = before
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: victim not in srv.worker_pids() and len(srv.worker_pids()) == 2, 60, "a new worker")
        replacement = (set(srv.worker_pids()) - {survivor}).pop()
        # The replacement loads the model before it accepts; then both workers take requests again.
        wait_for(lambda: srv.output().count("model loaded from") >= 3, 120, "the new worker's model")
        ready_at = time.monotonic()
        wait_for(lambda: sum(o.start > ready_at for o in outcomes) >= 30, 120, "30 requests after the restart")
        workers_after = sorted(srv.worker_pids())
        log = srv.output()
    finally:
        stop.set()
        for t in threads:
            t.join(150)
        srv.stop()

    assert workers_after == sorted([survivor, replacement])
    assert f"Worker (pid:{victim}) was sent SIGKILL" in log
    failed = [o for o in outcomes if o.status != 200]
    # Only a request the killed worker was answering may be lost: a sync worker holds one at a time.
    in_flight = [o for o in failed if o.start <= killed_at <= o.end]
    assert failed == in_flight and len(failed) <= 1, failed
    # nginx answers the lost request with its JSON 502 ("no worker answered"); never any other 5xx.
    assert all(o.status == 502 or isinstance(o.status, str) for o in failed)
    assert sum(o.start > killed_at for o in outcomes) >= 30
    assert len(outcomes) - len(failed) >= 50
