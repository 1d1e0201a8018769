"""Responses: a class-id mask as an indexed PNG, class probabilities as RecordIO-protobuf.

The probabilities of an 800x600 image with 21 classes are 10^7 floats (40 MB). Filling the
protobuf repeated field from Python costs ~1.8 s for that (upb converts every value), so the one
message we send is written by hand: a packed float field is a tag, a varint length and the raw
little-endian float32 bytes, straight from the numpy buffer (~50 ms in all for 800x600x21, most of it
the two copies of 40 MB: into the payload, then into the RecordIO frame). The
bytes equal `record_pb2.Record.SerializeToString(deterministic=True)` of the same message (tests
check this), and any protobuf reader parses them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gluonseg.codecs.content_types import PNG, PROTOBUF_TYPES, RESPONSE_TYPES, parse_content_type
from gluonseg.errors import NotAcceptable, RequestTooLarge
from gluonseg.palette import voc_palette
from gluonseg.recordio import MAX_LENGTH, encode_record

# zlib level for mask PNGs, measured on an 800x600 VOC-palette mask: a few smooth regions take
# 0.9 ms / 12.6 KB at level 1 and 3.1 ms / 7.2 KB at level 6; per-pixel noise (the worst case)
# 11 ms / 304 KB vs 17 ms / 295 KB. Level 6 saves a few KB at 1.5-3.5x the time: speed wins.
PNG_COMPRESS_LEVEL = 1

# Field tags (field_number << 3 | wire type 2, length-delimited) of the messages in record.proto.
_RECORD_FEATURES = 0x0A  # Record.features = 1 (map entry message)
_ENTRY_KEY = 0x0A  # map entry key = 1
_ENTRY_VALUE = 0x12  # map entry value = 2
_VALUE_FLOAT32 = 0x12  # Value.float32_tensor = 2
_VALUE_INT32 = 0x3A  # Value.int32_tensor = 7
_TENSOR_VALUES = 0x0A  # {Float32,Int32}Tensor.values = 1, packed


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload_len: int) -> bytes:
    """Tag and length of a length-delimited field whose payload follows."""
    return bytes((tag,)) + _varint(payload_len)


def _feature_entry_prefix(key: str, value_len: int) -> bytes:
    """Everything of a `features` map entry before its Value's bytes."""
    key_bytes = key.encode()
    entry_len = 1 + len(_varint(len(key_bytes))) + len(key_bytes) + 1 + len(_varint(value_len)) + value_len
    return (
        _field(_RECORD_FEATURES, entry_len)
        + _field(_ENTRY_KEY, len(key_bytes))
        + key_bytes
        + _field(_ENTRY_VALUE, value_len)
    )


def _tensor_value(value_tag: int, packed: bytes | None, packed_len: int) -> bytes:
    """A Value holding a tensor whose only field is packed `values` (written after this prefix)."""
    tensor = _field(_TENSOR_VALUES, packed_len) if packed_len else b""  # an empty packed field is omitted
    tensor_len = len(tensor) + packed_len
    return _field(value_tag, tensor_len) + tensor + (packed or b"")


def _int32_shape_value(dims: list[int]) -> bytes:
    packed = b"".join(_varint(d) for d in dims)  # dims are >= 0; negative int32 would need 10 bytes
    return _tensor_value(_VALUE_INT32, packed, len(packed))


def encode_probabilities(probs: np.ndarray) -> bytes:
    """One RecordIO record holding a `Record` with features["shape"] = [1, C, H, W] (int32) and
    features["target"] = the (C, H, W) probabilities as float32, row-major, dense."""
    if probs.ndim != 3:
        raise ValueError(f"probabilities must be (C, H, W), got shape {probs.shape}")
    channels, height, width = (int(d) for d in probs.shape)
    raw_len = 4 * channels * height * width
    shape_value = _int32_shape_value([1, channels, height, width])
    target_prefix = _tensor_value(_VALUE_FLOAT32, None, raw_len)
    target_value_len = len(target_prefix) + raw_len
    payload_len = (
        len(_feature_entry_prefix("shape", len(shape_value)))
        + len(shape_value)
        + len(_feature_entry_prefix("target", target_value_len))
        + target_value_len
    )
    if payload_len > MAX_LENGTH:  # checked before any copy of the data
        raise RequestTooLarge(
            f"the probabilities for a {height}x{width} image with {channels} classes take {payload_len} bytes, "
            f"more than one RecordIO record holds ({MAX_LENGTH}); send a smaller image or Accept: {PNG}"
        )
    # A byte view of the float32 data: the join below is then the only copy into the payload.
    raw = memoryview(np.ascontiguousarray(probs, dtype="<f4").reshape(-1)).cast("B")
    # Map entries in key order, as deterministic serialization writes them.
    payload = b"".join(
        (
            _feature_entry_prefix("shape", len(shape_value)),
            shape_value,
            _feature_entry_prefix("target", target_value_len),
            target_prefix,
            raw,
        )
    )
    return encode_record(payload)


def encode_png_mask(mask: np.ndarray, palette: list[int] | None = None) -> bytes:
    """An indexed (mode "P") PNG of a class-id mask (H, W); the palette defaults to the VOC colours."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values must be in 0..255 for a PNG, got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    colours = voc_palette() if palette is None else list(palette)
    if not colours or len(colours) % 3 or len(colours) > 768:
        raise ValueError(f"palette must hold 3 ints per colour, at most 256 colours; got {len(colours)} ints")
    img = Image.fromarray(np.ascontiguousarray(mask))  # uint8 (H, W) gives mode L
    img.putpalette(colours)  # turns the L image into P, indices unchanged
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def encode_response(
    accept: str,
    probabilities: np.ndarray | None,
    mask: np.ndarray | None,
    palette: list[int] | None = None,
) -> tuple[bytes, str]:
    """(body, Content-Type) for a negotiated Accept type (see `content_types.choose_accept`).

    image/png sends the mask (the argmax of `probabilities` when no mask is given); either protobuf
    type sends the probabilities, the same bytes under the Content-Type the client asked for.
    """
    media = parse_content_type(accept)
    if media not in RESPONSE_TYPES:
        raise NotAcceptable(f"cannot answer with {accept!r}; supported response types: {', '.join(RESPONSE_TYPES)}")
    if media == PNG:
        if mask is None:
            if probabilities is None:
                raise ValueError("image/png needs a mask or probabilities")
            mask = np.argmax(probabilities, axis=0)
        return encode_png_mask(mask, palette), PNG
    if media in PROTOBUF_TYPES:
        if probabilities is None:
            raise ValueError(f"{media} needs the probabilities")
        return encode_probabilities(probabilities), media
    raise AssertionError(f"unhandled response type {media}")  # pragma: no cover - RESPONSE_TYPES grew
