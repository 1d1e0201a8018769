"""Request bodies to RGB pixels, and RecordIO-protobuf responses back to probabilities.

`decode_image` is the server side: it takes untrusted bytes, so it refuses oversized images from
the header before any pixel is decoded (a few-hundred-byte PNG can declare 10^10 pixels), never
decodes a truncated file as gray filler, and turns every decoder failure into a short RequestError.
It keeps no state between calls and PIL decodes each request into its own objects, so gunicorn
threads may call it concurrently.

`decode_probabilities` is the client side, as the SageMaker notebook decodes a response; tests,
benchmarks and demos use it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps

from gluonseg.codecs.content_types import check_request_type
from gluonseg.errors import RequestError, RequestTooLarge

# When True, a cut-off JPEG or PNG "decodes" with the missing rows gray. It is a process-wide flag
# and `import gluoncv` turns it on (gluoncv/data/mhp.py), so it is turned off again before each load.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_DECODE_MAX_PIXELS = 36_000_000  # 6000 x 6000: far beyond what the model is fed, well within memory

# The formats we decode, by their leading bytes. Sniffed ourselves so that no other PIL plugin
# ever parses a request, and a mislabelled body (PNG sent as image/jpeg) still decodes.
_ACCEPTED_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))
# Only to name what was sent instead.
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def detect_format(body: bytes) -> str | None:
    """'JPEG' or 'PNG' from the leading bytes; None for anything else."""
    for signature, name in _ACCEPTED_SIGNATURES:
        if body.startswith(signature):
            return name
    return None


def _describe_other(body: bytes) -> str:
    for signature, name in _OTHER_SIGNATURES:
        if body.startswith(signature):
            return f"a {name} image"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "a WEBP image"
    if body[4:8] == b"ftyp":
        brand = body[8:12].decode("ascii", "replace").strip()
        return "a HEIC/HEIF image" if brand.startswith(("hei", "hev", "mif")) else f"an ISO media file ({brand})"
    if body.lstrip()[:1] in (b"{", b"[", b"<"):
        return "text (JSON or XML), not image bytes"
    return "not a recognised image format"


def _short(exc: BaseException) -> str:
    """A one-line reason from a decoder exception, without PIL's object reprs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "<_io." in text or "cannot identify image file" in text:
        return "the header is not valid"
    return text[:200]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB, the same way training's `gluonseg.data.images.load_image` does.

    Alpha is dropped, not composited: transparent pixels keep the colour stored under them, as at
    training time, so a model sees the same pixels for the same file in both places. 16-bit
    grayscale is stretched so the image's maximum becomes 255 (again as in training). Tests check
    that both give the same pixels.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        # training's formula, rounding included (it can land one level under the exact floor)
        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """The pixels turned as a viewer shows them; unchanged (no copy) without an orientation tag."""
    try:
        if int(img.getexif().get(0x0112, 1)) == 1:
            return img
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image (as in training)
        return img


def decode_image(body: bytes, content_type: str, decode_max_pixels: int = DEFAULT_DECODE_MAX_PIXELS) -> np.ndarray:
    """An HTTP request body to an RGB uint8 array (H, W, 3), turned as its EXIF orientation says.

    `content_type` must be one of the request types (else UnsupportedContentType) but need not match the
    bytes: a PNG labelled image/jpeg decodes, since clients mislabel often. Only JPEG and PNG bytes are
    decoded. Raises RequestError for an empty, unknown, truncated or corrupt body, RequestTooLarge for
    more than `decode_max_pixels` pixels, decided from the header alone.
    """
    check_request_type(content_type)
    if not body:
        raise RequestError("empty request body")
    body = bytes(body)  # a bytearray or memoryview from the server works too
    fmt = detect_format(body)
    if fmt is None:
        raise RequestError(f"the request body is {_describe_other(body)}; send a JPEG or PNG image")

    # Reset before open() too: with the flag on, the PNG header reader skips the CRC of ancillary
    # chunks, so a worker's first request (just after `import gluoncv`) would be judged differently.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # PIL's own decompression-bomb bound (a warning above MAX_IMAGE_PIXELS, an error above twice that)
    # follows ours when the operator raises ours past it (GLUONSEG_MAX_PIXELS up to 200 MP and more); it
    # only ever grows, so concurrent requests with different bounds never lower another's.
    if Image.MAX_IMAGE_PIXELS is not None and decode_max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = decode_max_pixels
    try:
        img = Image.open(io.BytesIO(body), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as exc:  # PIL's own cap (~179 MP) fires inside open()
        raise RequestTooLarge(
            f"the image is too large ({_short(exc)}); at most {decode_max_pixels} pixels are allowed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a request must never become a traceback
        raise RequestError(f"cannot decode the {fmt} image (truncated or corrupt?): {_short(exc)}") from None

    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise RequestError(f"the {fmt} image declares an empty size {width}x{height}")
        if width * height > decode_max_pixels:
            raise RequestTooLarge(
                f"the image is {width}x{height} = {width * height} pixels, more than the {decode_max_pixels} allowed; "
                "send a smaller image"
            )
        try:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            img.load()
            rgb = _to_rgb(_apply_exif_orientation(img))
            return np.asarray(rgb, dtype=np.uint8)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RequestError(f"cannot decode the {fmt} image (truncated or corrupt?): {_short(exc)}") from None
    finally:
        img.close()


def _packed_float32(tensor) -> np.ndarray:
    """A dense Float32Tensor's values as a float32 array, without a python float per value.

    Iterating the repeated field costs ~1 s per 10^7 values, so the tensor is serialized again:
    its only field is then `values`, packed: one tag byte, a varint length, raw little-endian floats.
    """
    raw = tensor.SerializeToString()
    if not raw:
        return np.empty(0, dtype=np.float32)
    pos = 1  # the tag 0x0A (field 1, length-delimited)
    length = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return np.frombuffer(raw, dtype="<f4", count=length // 4, offset=pos).astype(np.float32)


def decode_probabilities(body: bytes) -> np.ndarray:
    """A recordio-protobuf response to its probabilities (C, H, W) float32, as the notebook decodes it.

    One RecordIO record holding one `Record`; `features["shape"]` is [1, C, H, W] and
    `features["target"]` the dense values in row-major order.
    """
    from gluonseg.codecs import load_record_pb2
    from gluonseg.recordio import iter_records

    records = list(iter_records(io.BytesIO(bytes(body)), "the response"))
    if len(records) != 1:
        raise ValueError(f"expected one RecordIO record in the response, found {len(records)}")
    record = load_record_pb2().Record()
    record.ParseFromString(records[0])
    for name in ("shape", "target"):
        if name not in record.features:
            raise ValueError(f"the response Record has no features[{name!r}]")
    shape = [int(v) for v in record.features["shape"].int32_tensor.values]
    target = record.features["target"].float32_tensor
    if len(target.keys):
        raise ValueError("features['target'] is a sparse tensor; expected dense probabilities")
    values = _packed_float32(target)
    if len(shape) != 4 or shape[0] != 1 or int(np.prod(shape)) != values.size:
        raise ValueError(f"features['shape'] {shape} does not fit {values.size} values as [1, C, H, W]")
    return values.reshape(shape)[0]
