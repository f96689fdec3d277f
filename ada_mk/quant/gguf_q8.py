"""GGUF Q8_0 blocks <-> QuantizedMatrix, byte for byte (no float dequantization on the way).

A Q8_0 row of K weights is K / 32 blocks of 34 bytes: a little-endian fp16 scale d, then 32 int8
values q; W = d x q. That is QuantizedMatrix int8 with group 32, its scales the fp16 d widened to
float32 (exact).
"""
from __future__ import annotations

import numpy as np

from .errors import QuantFormatError
from .matrix import QuantizedMatrix

Q8_0_GROUP = 32
Q8_0_BLOCK_BYTES = 2 + Q8_0_GROUP


def q8_0_matrix(raw: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> QuantizedMatrix:
    """The QuantizedMatrix of a Q8_0 tensor's raw bytes (any array of uint8 holding
    N * K / 32 blocks in row order) for a matrix of `shape` [N, K]."""
    n, k = shape
    if k % Q8_0_GROUP:
        raise QuantFormatError(f"tensor {name!r}: Q8_0 rows of {k} weights are not whole blocks of {Q8_0_GROUP}")
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != n * (k // Q8_0_GROUP) * Q8_0_BLOCK_BYTES:
        raise QuantFormatError(f"tensor {name!r}: {raw.size} bytes of Q8_0 data do not hold a {n} x {k} matrix")
    blocks = raw.reshape(n, k // Q8_0_GROUP, Q8_0_BLOCK_BYTES)
    d = np.ascontiguousarray(blocks[:, :, :2]).view("<f2").reshape(n, k // Q8_0_GROUP).astype(np.float32)
    q = np.ascontiguousarray(blocks[:, :, 2:]).reshape(n, k)
    return QuantizedMatrix(q, d, "int8", Q8_0_GROUP)


def q8_0_bytes(m: QuantizedMatrix) -> np.ndarray:
    """The Q8_0 bytes (uint8 [N, K / 32 * 34]) of an int8 QuantizedMatrix with group 32 and fp16
    scales, as q8_0_matrix returns: its exact inverse."""
    if m.fmt != "int8" or m.group != Q8_0_GROUP:
        raise ValueError(f"Q8_0 needs an int8 matrix with group {Q8_0_GROUP}, not {m.fmt} group {m.group}")
    d = m.scales.astype("<f2")
    if not np.array_equal(d.astype(np.float32), m.scales):
        raise ValueError("Q8_0 stores fp16 scales; these scales are not all fp16 values")
    n, k = m.shape
    blocks = np.empty((n, k // Q8_0_GROUP, Q8_0_BLOCK_BYTES), np.uint8)
    blocks[:, :, :2] = d.view(np.uint8).reshape(n, k // Q8_0_GROUP, 2)
    blocks[:, :, 2:] = m.q.reshape(n, k // Q8_0_GROUP, Q8_0_GROUP)
    return blocks.reshape(n, -1)
