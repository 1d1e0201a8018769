"""Scoring-server codecs: request images in, PNG masks and RecordIO-protobuf probabilities out."""

from __future__ import annotations

import io
import struct
import sys
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np
import pytest
from PIL import Image, ImageFile

from gluonseg.codecs import content_types as ct
from gluonseg.codecs import load_record_pb2
from gluonseg.codecs.decode import decode_image, decode_probabilities
from gluonseg.codecs.encode import encode_png_mask, encode_probabilities, encode_response
from gluonseg.data.images import load_image
from gluonseg.errors import NotAcceptable, RequestError, RequestTooLarge, UnsupportedContentType
from gluonseg.palette import voc_palette
from gluonseg.recordio import MAGIC, iter_records
from serve.app import status_of

record_pb2 = load_record_pb2()


# ---------------------------------------------------------------- builders


def smooth_rgb(height: int = 32, width: int = 48) -> np.ndarray:
    """Gradients: JPEG keeps them within a few levels, so decoded pixels can be compared."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 90)], -1).astype(np.uint8)


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 for one component of width x height, and the start of a scan."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes((1, 0x11, 0))
    sos = bytes((1, 1, 0x00, 0, 63, 0))
    return (
        b"\xff\xd8"
        + b"\xff\xc0"
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xda"
        + struct.pack(">H", len(sos) + 2)
        + sos
        + b"\0" * 32
    )


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def random_probs(shape, seed=0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- decode: accepted formats and modes


def test_jpeg_rgb_decodes_close_to_source():
    rgb = smooth_rgb()
    out = decode_image(save(Image.fromarray(rgb), "JPEG", quality=95), "image/jpeg")
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    assert mean_abs_diff(out, rgb) < 3


def test_progressive_jpeg():
    rgb = smooth_rgb()
    body = save(Image.fromarray(rgb), "JPEG", quality=95, progressive=True)
    assert Image.open(io.BytesIO(body)).info.get("progressive")
    out = decode_image(body, "image/jpeg")
    assert out.shape == (32, 48, 3) and mean_abs_diff(out, rgb) < 3


def test_grayscale_jpeg_becomes_three_equal_channels():
    gray = smooth_rgb()[..., 0]
    out = decode_image(save(Image.fromarray(gray, "L"), "JPEG", quality=95), "image/jpeg")
    assert out.shape == (32, 48, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert mean_abs_diff(out[..., 0], gray) < 3


def test_cmyk_jpeg_converted_to_rgb():
    rgb = smooth_rgb()
    body = save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(body)).mode == "CMYK"
    out = decode_image(body, "image/jpeg")
    assert out.shape == (32, 48, 3) and mean_abs_diff(out, rgb) < 4


def test_png_rgba_drops_alpha():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the stored colours must survive (as in training)
    out = decode_image(save(Image.fromarray(rgba, "RGBA"), "PNG"), "image/png")
    assert np.array_equal(out, rgba[..., :3])


def test_png_la_drops_alpha():
    rng = np.random.default_rng(2)
    la = rng.integers(0, 256, (20, 30, 2), dtype=np.uint8)
    out = decode_image(save(Image.fromarray(la, "LA"), "PNG"), "image/png")
    assert np.array_equal(out, np.repeat(la[..., :1], 3, axis=2))


@pytest.mark.parametrize("transparency", [False, True])
def test_png_palette_looks_up_colours(transparency):
    rng = np.random.default_rng(3)
    index = rng.integers(0, 16, (20, 30), dtype=np.uint8)
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    img = Image.fromarray(index, "L")
    img.putpalette(colours.ravel().tolist())
    kwargs = {"transparency": 5} if transparency else {}
    body = save(img, "PNG", **kwargs)
    reopened = Image.open(io.BytesIO(body))
    assert reopened.mode == "P" and ("transparency" in reopened.info) == transparency
    out = decode_image(body, "image/png")
    assert np.array_equal(out, colours[index])


def test_png_l_and_bilevel():
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = decode_image(save(Image.fromarray(gray, "L"), "PNG"), "image/png")
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    bits = gray > 127
    out = decode_image(save(Image.fromarray(bits), "PNG"), "image/png")
    assert np.array_equal(out[..., 1], np.where(bits, 255, 0).astype(np.uint8))


def test_png_16_bit_grayscale_scaled_to_its_maximum():
    rng = np.random.default_rng(5)
    deep = rng.integers(0, 40000, (20, 30), dtype=np.uint16)
    img = Image.fromarray(deep.astype(np.uint16), "I;16")
    body = save(img, "PNG")
    assert Image.open(io.BytesIO(body)).mode.startswith("I")
    out = decode_image(body, "image/png")
    exact = deep.astype(np.int64) * 255 // int(deep.max())
    assert np.abs(out[..., 0].astype(np.int64) - exact).max() <= 1  # training's float formula may round down
    assert out[..., 0].max() >= 254 and np.array_equal(out[..., 0], out[..., 2])


def all_kinds_of_bodies() -> list[bytes]:
    rng = np.random.default_rng(10)
    rgb = smooth_rgb()
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    palette_img = Image.fromarray(rng.integers(0, 9, (20, 30), dtype=np.uint8), "L")
    palette_img.putpalette(rng.integers(0, 256, 768).tolist())
    return [
        save(Image.fromarray(rgb), "JPEG"),
        save(Image.fromarray(rgb), "JPEG", exif=exif.tobytes()),
        save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        save(Image.fromarray(rgb[..., 1], "L"), "JPEG"),
        save(Image.fromarray(rgba, "RGBA"), "PNG"),
        save(Image.fromarray(rgba[..., :2], "LA"), "PNG"),
        save(palette_img, "PNG"),
        save(palette_img, "PNG", transparency=3),
        save(Image.fromarray(rng.integers(0, 60000, (20, 30), dtype=np.uint16), "I;16"), "PNG"),
    ]


def test_same_pixels_as_training_images():
    # a served image must reach the model as the same file did in training
    for body in all_kinds_of_bodies():
        assert np.array_equal(decode_image(body, "image/jpeg"), load_image(body, "x"))


def test_exif_orientation_6_is_turned_clockwise():
    # 4:4:4 quality-98 JPEG of 8x8 colour blocks: each block stays close to its colour
    rng = np.random.default_rng(6)
    blocks = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    stored = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # 32 x 48
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    body = save(Image.fromarray(stored), "JPEG", quality=98, subsampling=0, exif=exif.tobytes())
    out = decode_image(body, "image/jpeg")
    assert out.shape == (48, 32, 3)
    clockwise = np.rot90(stored, k=-1)
    assert mean_abs_diff(out, clockwise) < 4
    assert mean_abs_diff(out, np.rot90(stored, k=1)) > 30  # the other way round is far off


def test_declared_type_need_not_match_the_bytes():
    rgb = smooth_rgb()
    png = save(Image.fromarray(rgb), "PNG")
    assert np.array_equal(decode_image(png, "image/jpeg"), rgb)
    assert np.array_equal(decode_image(bytearray(png), "application/x-image"), rgb)
    jpeg = save(Image.fromarray(rgb), "JPEG", quality=95)
    assert decode_image(jpeg, "Image/PNG; charset=binary").shape == (32, 48, 3)


def test_unsupported_declared_type_is_415():
    png = save(Image.fromarray(smooth_rgb()), "PNG")
    with pytest.raises(UnsupportedContentType) as info:
        decode_image(png, "text/plain")
    assert status_of(info.value) == 415 and "image/jpeg" in str(info.value)


def test_threads_decode_independently():
    bodies = [save(Image.fromarray(np.full((16 + i, 20, 3), i * 20, np.uint8)), "PNG") for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda b: decode_image(b, "image/png"), bodies * 4))
    for i, out in enumerate(outs):
        k = i % 8
        assert out.shape == (16 + k, 20, 3) and (out == k * 20).all()


# ---------------------------------------------------------------- decode: refused bodies


def assert_400(body: bytes, *words: str) -> str:
    with pytest.raises(RequestError) as info:
        decode_image(body, "image/jpeg")
    assert type(info.value) is RequestError and status_of(info.value) == 400
    message = str(info.value)
    assert "Traceback" not in message and "<_io" not in message and len(message) < 300
    for word in words:
        assert word in message
    return message


def test_empty_body():
    assert_400(b"", "empty request body")


def test_random_bytes():
    assert_400(np.random.default_rng(7).integers(0, 256, 1000, dtype=np.uint8).tobytes(), "JPEG or PNG")


def test_json_body_is_named():
    assert_400(b'{"instances": [1, 2]}', "JSON")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_refused_not_grayed(fmt):
    rng = np.random.default_rng(8)
    body = save(Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)), fmt)
    import gluoncv  # noqa: F401 - it turns ImageFile.LOAD_TRUNCATED_IMAGES on; decoding must not care

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    assert_400(body[: len(body) // 2], fmt)
    assert_400(body[:60], fmt)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_named(fmt):
    body = save(Image.fromarray(smooth_rgb()), fmt)
    assert_400(body, fmt)


def test_corrupt_png_header_is_400():
    body = bytearray(save(Image.fromarray(smooth_rgb()), "PNG"))
    body[20] ^= 0xFF  # inside IHDR: the CRC no longer matches
    assert_400(bytes(body), "PNG")


# ---------------------------------------------------------------- decode: size limits


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test."""

    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize(
    "body",
    [png_declaring(100_000, 100_000), jpeg_declaring(65_000, 65_000), png_declaring(7_000, 7_000)],
    ids=["png-10G-pixels", "jpeg-4G-pixels", "png-49M-pixels"],
)
def test_decompression_bombs_refused_from_the_header(body, no_pixel_decoding):
    assert len(body) < 200
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(RequestTooLarge) as info:
            decode_image(body, "image/png")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status_of(info.value) == 413
    assert elapsed < 1.0
    assert peak < 2_000_000


def test_max_pixels_is_honoured():
    body = save(Image.fromarray(smooth_rgb(20, 30)), "PNG")
    assert decode_image(body, "image/png", decode_max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(RequestTooLarge, match="20 = 600 pixels, more than the 599"):
        decode_image(body, "image/png", decode_max_pixels=599)


# ---------------------------------------------------------------- content types


def test_parse_content_type():
    assert ct.parse_content_type("Image/JPEG; charset=binary") == "image/jpeg"
    assert ct.parse_content_type(" application/x-image ") == "application/x-image"
    assert ct.parse_content_type(None) == ""


@pytest.mark.parametrize("header", ["image/jpeg", "IMAGE/JPEG", "image/jpeg; charset=binary", "image/png", ct.X_IMAGE])
def test_request_types_accepted(header):
    assert ct.check_request_type(header) in ct.REQUEST_TYPES


@pytest.mark.parametrize("header", [None, "", "application/json", "application/octet-stream", "image/gif"])
def test_request_types_refused_with_415(header):
    with pytest.raises(UnsupportedContentType) as info:
        ct.check_request_type(header)
    assert status_of(info.value) == 415
    for supported in ct.REQUEST_TYPES:
        assert supported in str(info.value)


@pytest.mark.parametrize(
    "accept, default, expected",
    [
        (None, ct.PNG, ct.PNG),
        ("", ct.RECORDIO_PROTOBUF, ct.RECORDIO_PROTOBUF),
        ("*/*", ct.PNG, ct.PNG),
        ("*/*", ct.PROTOBUF, ct.PROTOBUF),
        ("image/*", ct.PROTOBUF, ct.PNG),
        ("IMAGE/PNG", ct.PROTOBUF, ct.PNG),
        ("application/x-protobuf", ct.PNG, ct.PROTOBUF),
        ("application/x-recordio-protobuf; charset=utf-8", ct.PNG, ct.RECORDIO_PROTOBUF),
        ("application/x-recordio-protobuf;q=0.5, image/png;q=0.9", ct.PROTOBUF, ct.PNG),
        ("image/png;q=0.2, application/x-protobuf;q=0.8", ct.PNG, ct.PROTOBUF),
        ("image/png;q=0, */*", ct.PNG, ct.RECORDIO_PROTOBUF),
        ("application/json, */*;q=0.1", ct.PROTOBUF, ct.PROTOBUF),
        ("*/*;q=0.1, image/png", ct.PROTOBUF, ct.PNG),
        ("application/x-protobuf, image/png", ct.PNG, ct.PROTOBUF),
        ("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2", ct.PNG, ct.PNG),
        ("application/*", ct.PNG, ct.RECORDIO_PROTOBUF),
        ("image/png; q=banana", ct.PROTOBUF, ct.PNG),
    ],
)
def test_choose_accept(accept, default, expected):
    assert ct.choose_accept(accept, default) == expected


@pytest.mark.parametrize("accept", ["application/json", "image/png;q=0", "image/jpeg, text/*", "image/*;q=0"])
def test_choose_accept_refuses_with_406(accept):
    with pytest.raises(NotAcceptable) as info:
        ct.choose_accept(accept, ct.PNG)
    assert status_of(info.value) == 406
    for supported in ct.RESPONSE_TYPES:
        assert supported in str(info.value)


def test_unsupported_default_is_406():
    with pytest.raises(NotAcceptable, match="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"):
        ct.choose_accept(None, ct.JSON)


# ---------------------------------------------------------------- PNG masks


def test_png_mask_round_trip():
    rng = np.random.default_rng(9)
    mask = rng.integers(0, 21, (37, 53), dtype=np.uint8)
    mask[0, :5] = 255
    img = Image.open(io.BytesIO(encode_png_mask(mask)))
    assert img.format == "PNG" and img.mode == "P" and img.size == (53, 37)
    assert img.getpalette() == voc_palette()
    assert np.array_equal(np.array(img), mask)  # as the notebook reads it


def test_png_mask_custom_palette_and_wide_dtype():
    mask = np.arange(12, dtype=np.int64).reshape(3, 4)
    palette = [v for i in range(12) for v in (i * 20, 255 - i * 20, 7)]
    img = Image.open(io.BytesIO(encode_png_mask(mask, palette)))
    assert img.mode == "P" and img.getpalette()[: len(palette)] == palette
    assert np.array_equal(np.array(img), mask)


@pytest.mark.parametrize(
    "mask, palette",
    [(np.full((2, 2), 256), None), (np.zeros((2, 2, 1), np.uint8), None), (np.zeros((2, 2), np.uint8), [1, 2])],
)
def test_png_mask_bad_input(mask, palette):
    with pytest.raises(ValueError):
        encode_png_mask(mask, palette)


# ---------------------------------------------------------------- probabilities


def test_protobuf_decoded_as_the_notebook_does(tmp_path):
    probs = random_probs((5, 7, 9))
    probs[2, 3, 4] = np.array([MAGIC], dtype="<u4").view("<f4")[0]  # the RecordIO magic inside the payload
    results_file = tmp_path / "results.rec"
    results_file.write_bytes(encode_probabilities(probs))

    rec = record_pb2.Record()
    recordio = mx.recordio.MXRecordIO(str(results_file), "r")
    rec.ParseFromString(recordio.read())
    assert recordio.read() is None  # exactly one record
    recordio.close()
    values = list(rec.features["target"].float32_tensor.values)
    shape = list(rec.features["shape"].int32_tensor.values)
    assert shape == [1, 5, 7, 9]
    mask = np.reshape(np.array(values), np.squeeze(shape))
    mask = np.squeeze(mask, axis=0)
    assert np.array_equal(np.argmax(mask, axis=0), np.argmax(probs, axis=0))
    assert np.array_equal(np.array(values, dtype=np.float32), probs.ravel())
    assert len(rec.features["target"].float32_tensor.keys) == 0 and set(rec.features) == {"shape", "target"}


def test_protobuf_read_with_the_pure_python_reader():
    probs = random_probs((3, 4, 6), seed=1)
    (payload,) = list(iter_records(io.BytesIO(encode_probabilities(probs)), "response"))
    rec = record_pb2.Record()
    rec.ParseFromString(payload)
    values = np.array(rec.features["target"].float32_tensor.values, dtype=np.float32)
    assert np.array_equal(values.reshape(rec.features["shape"].int32_tensor.values)[0], probs)


@pytest.mark.parametrize("shape", [(1, 1, 1), (21, 6, 8), (2, 300, 1)])
def test_hand_encoding_equals_protobuf_serialization(shape):
    probs = random_probs(shape, seed=2)
    (payload,) = list(iter_records(io.BytesIO(encode_probabilities(probs)), "response"))
    rec = record_pb2.Record()
    rec.features["shape"].int32_tensor.values.extend([1, *shape])
    rec.features["target"].float32_tensor.values.extend(probs.ravel().tolist())
    assert payload == rec.SerializeToString(deterministic=True)


def test_non_float32_and_strided_input():
    probs = random_probs((4, 5, 6), seed=3)
    wide = probs.astype(np.float64).transpose(0, 2, 1)  # not contiguous, not float32
    assert np.array_equal(decode_probabilities(encode_probabilities(wide)), wide.astype(np.float32))


def test_decode_probabilities_round_trip():
    probs = random_probs((21, 12, 16), seed=4)
    out = decode_probabilities(encode_probabilities(probs))
    assert out.dtype == np.float32 and np.array_equal(out, probs)


def test_too_large_for_one_record_refused_before_copying():
    huge = np.broadcast_to(np.float32(0.5), (1, 12_000, 12_000))  # 576 MB if it were copied
    with pytest.raises(RequestTooLarge, match="image/png"):
        encode_probabilities(huge)


# ---------------------------------------------------------------- responses


def test_encode_response_png():
    probs = random_probs((4, 6, 8), seed=5)
    body, content_type = encode_response(ct.PNG, probs, None, None)
    assert content_type == "image/png"
    assert np.array_equal(np.array(Image.open(io.BytesIO(body))), np.argmax(probs, axis=0))

    mask = np.full((6, 8), 3, np.uint8)
    body, _ = encode_response("image/png", probs, mask, voc_palette())
    assert np.array_equal(np.array(Image.open(io.BytesIO(body))), mask)


def test_encode_response_protobuf_types_echo_the_request():
    probs = random_probs((3, 5, 4), seed=6)
    a, type_a = encode_response(ct.RECORDIO_PROTOBUF, probs, None, None)
    b, type_b = encode_response("application/x-protobuf; charset=binary", probs, None, None)
    assert (type_a, type_b) == (ct.RECORDIO_PROTOBUF, ct.PROTOBUF)
    assert a == b and np.array_equal(decode_probabilities(a), probs)


def test_encode_response_unsupported():
    with pytest.raises(NotAcceptable):
        encode_response("application/json", random_probs((2, 2, 2)), None, None)


def test_missing_record_pb2_says_make_proto(monkeypatch):
    import gluonseg.codecs

    monkeypatch.delattr(gluonseg.codecs, "record_pb2", raising=False)
    monkeypatch.setitem(sys.modules, "gluonseg.codecs.record_pb2", None)  # import of it fails
    with pytest.raises(ImportError, match="make proto"):
        load_record_pb2()


def test_a_raised_bound_is_not_overruled_by_pils_own_limit(no_pixel_decoding):
    body = png_declaring(20_000, 9_500)  # 190 MP: past PIL's default bomb error (twice 89.5 MP)
    with pytest.raises(RequestError, match="pixels were decoded") as info:  # let through to the decoder
        decode_image(body, "image/png", decode_max_pixels=200_000_000)
    assert not isinstance(info.value, RequestTooLarge)
    with pytest.raises(RequestTooLarge, match="more than the 150000000 allowed"):
        decode_image(body, "image/png", decode_max_pixels=150_000_000)
