"""Exact float32 packing for the ps-lite servers, which store and sum float32 only: non-negative integers
travel as 16-bit limbs (sums exact for up to 256 hosts) and byte strings as values below 2**24."""

from __future__ import annotations

from typing import Any

LIMB_BITS = 16
LIMBS = 4  # 64-bit counts as four 16-bit limbs; a sum of up to 256 limbs stays below 2**24, exact in float32


def int_to_limbs(values: Any) -> Any:
    """Non-negative int64 values -> float32 array of 16-bit limbs (shape (LIMBS, n)), exact in float32."""
    import numpy as np

    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size and values.min() < 0:
        raise ValueError("only non-negative integers can be summed exactly")
    mask = (1 << LIMB_BITS) - 1
    return np.stack([(values >> (LIMB_BITS * i)) & mask for i in range(LIMBS)]).astype(np.float32)


def limbs_to_int(limbs: Any) -> Any:
    """Inverse of int_to_limbs, for limbs that were summed (each limb sum is an exact integer < 2**24)."""
    import numpy as np

    limbs = np.rint(np.asarray(limbs, dtype=np.float64)).astype(np.int64).reshape(LIMBS, -1)
    return sum(limbs[i] << (LIMB_BITS * i) for i in range(LIMBS))


def bytes_to_floats(data: bytes) -> Any:
    """Bytes as float32 values below 2**24 (three bytes each): exact in float32, and a sum with zeros
    leaves them unchanged."""
    import numpy as np

    padded = np.frombuffer(data + b"\0" * (-len(data) % 3), dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
    return (padded[:, 0] | padded[:, 1] << 8 | padded[:, 2] << 16).astype(np.float32)


def floats_to_bytes(values: Any, length: int) -> bytes:
    import numpy as np

    v = np.asarray(values, dtype=np.float32).astype(np.uint32)
    return np.stack([v & 255, (v >> 8) & 255, v >> 16], axis=1).astype(np.uint8).tobytes()[:length]
