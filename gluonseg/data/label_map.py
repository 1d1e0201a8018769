"""The `label_map` channel: `{"scale": N}` or `{"map": {"<class>": <pixel value>}}`, as a 256-entry table.

Choices where SageMaker's docs are silent (spec §4.3), made strict and documented in the README:
- scale: class = pixel // N; 255 stays 255 (ignore) rather than becoming 255 // N.
- map: pixel values absent from the map become 255 (ignore); 255 is ignore unless the map names it.
- scale and map together, unknown keys, non-integers, classes or pixel values outside 0..255: ClientError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gluonseg.environment import read_json_file
from gluonseg.errors import ClientError

IGNORE = 255
LABEL_MAP_FILES = {"train": "train_label_map.json", "validation": "validation_label_map.json"}
MAX_LABEL_MAP_BYTES = 64 * 1024


@dataclass(frozen=True)
class LabelMap:
    """Pixel value → class id lookup table (uint8, 256 entries)."""

    lut: np.ndarray
    description: str = '{"scale": 1}'

    def apply(self, mask: np.ndarray) -> np.ndarray:
        return self.lut[mask]

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.lut, np.arange(256, dtype=np.uint8)))

    @classmethod
    def identity(cls) -> LabelMap:
        return cls(np.arange(256, dtype=np.uint8))


def _as_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise ClientError(f"{where}: {what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ClientError(f"{where}: {what} must be an integer, got {value!r}")


def parse_label_map(data: Any, where: str) -> LabelMap:
    """Build the lookup table from the parsed JSON of one label-map file."""
    if not isinstance(data, dict):
        raise ClientError(f"{where}: a label map must be a JSON object with 'scale' or 'map'")
    keys = set(data)
    if keys == {"scale"}:
        scale = _as_int(data["scale"], "'scale'", where)
        if not 1 <= scale <= 255:
            raise ClientError(f"{where}: 'scale' must be between 1 and 255, got {scale}")
        lut = (np.arange(256) // scale).astype(np.uint8)
        lut[IGNORE] = IGNORE
        return LabelMap(lut, f'{{"scale": {scale}}}')
    if keys == {"map"}:
        mapping = data["map"]
        if not isinstance(mapping, dict) or not mapping:
            raise ClientError(f"{where}: 'map' must be a non-empty object of class id -> pixel value")
        lut = np.full(256, IGNORE, dtype=np.uint8)
        seen: dict[int, int] = {}
        for cls_key, pixel_value in mapping.items():
            cls = _as_int(cls_key, f"class id {cls_key!r}", where)
            pixel = _as_int(pixel_value, f"pixel value for class {cls_key!r}", where)
            if not 0 <= cls <= 254:
                raise ClientError(f"{where}: class id {cls} is outside 0..254")
            if not 0 <= pixel <= 255:
                raise ClientError(f"{where}: pixel value {pixel} for class {cls} is outside 0..255")
            if pixel in seen:
                raise ClientError(f"{where}: pixel value {pixel} is mapped to both class {seen[pixel]} and class {cls}")
            seen[pixel] = cls
            lut[pixel] = cls
        return LabelMap(lut, f"map of {len(seen)} pixel values")
    if {"scale", "map"} <= keys:
        raise ClientError(f"{where}: use either 'scale' or 'map', not both")
    extra = sorted(keys - {"scale", "map"})
    if extra:
        raise ClientError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in extra)}; a label map has 'scale' or 'map'"
        )
    raise ClientError(f"{where}: a label map must have 'scale' or 'map'")


def load_label_map(label_map_dir: Path | None, split: str) -> LabelMap:
    """The label map for `split` ('train' or 'validation'); identity when the file or channel is absent."""
    if label_map_dir is None:
        return LabelMap.identity()
    path = label_map_dir / LABEL_MAP_FILES[split]
    if not path.exists():
        return LabelMap.identity()
    data = read_json_file(path, "label map", max_bytes=MAX_LABEL_MAP_BYTES)
    return parse_label_map(data, str(path))
