"""Small builders shared by tests: images, masks and /opt/ml trees made on the spot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 40, height: int = 30, seed: int = 0, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, fmt)
    return path


def write_mask(path: Path, values: np.ndarray, mode: str = "P") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([i for c in range(256) for i in (c, 255 - c, (c * 7) % 256)])
    elif mode != "L":
        img = img.convert(mode)
    img.save(path, "PNG")
    return path


def mask_values(width: int = 40, height: int = 30, classes: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, classes, (height, width)).astype(np.uint8)
    m[0, :] = 255
    return m


def make_channels(root: Path, n_train: int = 3, n_val: int = 2, classes: int = 3, size=(40, 30)) -> Path:
    """A valid File-mode layout under root (the `input/data` folder)."""
    w, h = size
    for split, n in (("train", n_train), ("validation", n_val)):
        for i in range(n):
            write_image(root / split / f"img_{i}.jpg", w, h, seed=i)
            write_mask(root / f"{split}_annotation" / f"img_{i}.png", mask_values(w, h, classes, seed=i))
    return root


def make_job(base: Path, hyperparameters: dict, **channel_kwargs) -> Path:
    """An /opt/ml tree: config files and data channels."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    make_channels(base / "input" / "data", **channel_kwargs)
    return base
