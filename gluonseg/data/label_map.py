"""The `label_map` channel: `{"scale": N}` or `{"map": {"<class>": <pixel value>}}`, as a 256-entry table.

Choices where SageMaker's docs are silent (spec §4.3), made strict and documented in the README:
- scale: class = pixel // N; 255 stays 255 (ignore) rather than becoming 255 // N.
- map: pixel values absent from the map become 255 (ignore); 255 is ignore unless the map names it.
- scale and map together, unknown keys, non-integers: ClientError.
- A mistake of the map itself fails when the map is read, naming the file and the key: a class id
  outside 0..num_classes-1, a pixel value outside 0..255, one pixel value mapped by two keys. (A
  scale's classes depend on the pixel values present, so the mask scan checks those.)
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
    source: str = ""  # the file it came from, as messages name it: "label_map/train_label_map.json"

    def describe(self) -> str:
        """`label_map/train_label_map.json ({"scale": 2})`, for messages."""
        return f"{self.source} ({self.description})" if self.source else f"({self.description})"

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


def parse_label_map(data: Any, where: str, num_classes: int | None = None) -> LabelMap:
    """Build the lookup table from the parsed JSON of one label-map file (`where` names it).

    With `num_classes`, a 'map' key outside 0..num_classes-1 fails here; without it, outside 0..254.
    """
    if not isinstance(data, dict):
        raise ClientError(f"{where}: a label map must be a JSON object with 'scale' or 'map'")
    keys = set(data)
    if keys == {"scale"}:
        scale = _as_int(data["scale"], "'scale'", where)
        if not 1 <= scale <= 255:
            raise ClientError(f"{where}: 'scale' must be between 1 and 255, got {scale}")
        lut = (np.arange(256) // scale).astype(np.uint8)
        lut[IGNORE] = IGNORE
        return LabelMap(lut, f'{{"scale": {scale}}}', where)
    if keys == {"map"}:
        mapping = data["map"]
        if not isinstance(mapping, dict) or not mapping:
            raise ClientError(f"{where}: 'map' must be a non-empty object of class id -> pixel value")
        top = (num_classes - 1) if num_classes is not None else IGNORE - 1
        classes = f"0..{top} (num_classes={num_classes})" if num_classes is not None else f"0..{top}"
        lut = np.full(256, IGNORE, dtype=np.uint8)
        seen: dict[int, str] = {}
        for cls_key, pixel_value in mapping.items():
            cls = _as_int(cls_key, f"class id {cls_key!r}", where)
            pixel = _as_int(pixel_value, f"pixel value for class {cls_key!r}", where)
            if not 0 <= cls <= top:
                raise ClientError(
                    f"{where}: key {cls_key!r} of 'map' is class id {cls}, outside the classes {classes}; "
                    "a key of 'map' is the class id used for training, its value the pixel value in the masks"
                )
            if not 0 <= pixel <= 255:
                raise ClientError(
                    f"{where}: key {cls_key!r} of 'map' has pixel value {pixel}, outside the pixel values 0..255"
                )
            if pixel in seen:
                raise ClientError(
                    f"{where}: keys {seen[pixel]!r} and {cls_key!r} of 'map' both have pixel value {pixel}; "
                    "a pixel value can become one class only"
                )
            seen[pixel] = cls_key
            lut[pixel] = cls
        return LabelMap(lut, f"map of {len(seen)} pixel values", where)
    if {"scale", "map"} <= keys:
        raise ClientError(f"{where}: use either 'scale' or 'map', not both")
    extra = sorted(keys - {"scale", "map"})
    if extra:
        raise ClientError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in extra)}; a label map has 'scale' or 'map'"
        )
    raise ClientError(f"{where}: a label map must have 'scale' or 'map'")


def load_label_map(label_map_dir: Path | None, split: str, num_classes: int | None = None) -> LabelMap:
    """The label map for `split` ('train' or 'validation'); identity when the file or channel is absent.

    Messages name the file channel-relative, as the user uploaded it: `label_map/train_label_map.json`.
    """
    if label_map_dir is None:
        return LabelMap.identity()
    path = label_map_dir / LABEL_MAP_FILES[split]
    if not path.exists():
        return LabelMap.identity()
    shown = f"{label_map_dir.name}/{path.name}"
    data = read_json_file(path, "label map", max_bytes=MAX_LABEL_MAP_BYTES, shown=shown)
    return parse_label_map(data, shown, num_classes)
