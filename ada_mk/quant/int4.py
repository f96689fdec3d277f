"""Int4Matrix: a 4-bit weight matrix with float32 scales (and offsets) per output row and group of
input columns, the one host form every 4-bit source (GGUF Q4_0 / Q4_1 / Q4_K, AWQ, GPTQ, the
round-to-nearest quantizer) is read into. The kernel's nibble-packed layout is made from it later.

    m.q        uint8 [N, K], unsigned 4-bit codes in [0, 15], one per byte (unpacked)
    m.scales   float32 [N, K // group]
    m.offsets  float32 [N, K // group], or None
    m.group    input columns per scale

One canonical formula per kind, with g = k // group:
    asymmetric (offsets given):  W[n, k] = q[n, k] * scales[n, g] + offsets[n, g]
    symmetric  (offsets None):   W[n, k] = (q[n, k] - 8) * scales[n, g]

The offset is a float, not an integer zero point, so every source maps onto it: GGUF Q4_1's
minimum (offset = m), Q4_K's sub-block minimum (offset = -(dmin * m)), and an integer zero point z
of AWQ / GPTQ / the quantizer (offset = -(z * scale)). Each reader's docstring says whether its
conversion is exact; for the fp16-scaled sources (GGUF, AWQ, GPTQ) it is, because a product of an
fp16 value and an integer below 2^6 is exact in float32 and so is the sum that forms W.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT4_MAX = 15  # codes are 0..15
SYMMETRIC_ZERO = 8  # the zero point of the symmetric form


@dataclass(frozen=True, eq=False)
class Int4Matrix:
    q: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None
    group: int

    def __post_init__(self) -> None:
        if self.q.dtype != np.uint8 or self.q.ndim != 2:
            raise ValueError(f"Int4Matrix: q must be a 2-D uint8 array, not {self.q.dtype} {self.q.shape}")
        n, k = self.q.shape
        if self.group <= 0 or k % self.group:
            raise ValueError(f"Int4Matrix: group {self.group} does not divide K = {k}")
        want = (n, k // self.group)
        if self.scales.dtype != np.float32 or self.scales.shape != want:
            raise ValueError(f"Int4Matrix: scales must be float32 {want}, not {self.scales.dtype} {self.scales.shape}")
        if self.offsets is not None and (self.offsets.dtype != np.float32 or self.offsets.shape != want):
            raise ValueError(f"Int4Matrix: offsets must be float32 {want} or None, not "
                             f"{self.offsets.dtype} {self.offsets.shape}")
        if self.q.size and int(self.q.max()) > INT4_MAX:
            raise ValueError(f"Int4Matrix: codes must lie in [0, {INT4_MAX}], found {int(self.q.max())}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    @property
    def symmetric(self) -> bool:
        """True for W = (q - 8) * scale (no offsets)."""
        return self.offsets is None

    @property
    def nbytes(self) -> int:
        """Bytes the matrix takes packed two codes a byte, plus its float32 scales and offsets."""
        n, k = self.shape
        return int((n * k + 1) // 2 + self.scales.nbytes + (0 if self.offsets is None else self.offsets.nbytes))

    def dequantize(self) -> np.ndarray:
        """W as float32 [N, K] by the canonical formula: q * scale + offset (one float32 multiply,
        then one float32 add, never fused), or (q - 8) * scale (exact subtraction, one multiply)."""
        n, k = self.shape
        g = k // self.group
        q = self.q.reshape(n, g, self.group).astype(np.float32)
        if self.offsets is None:
            return ((q - np.float32(SYMMETRIC_ZERO)) * self.scales[:, :, None]).reshape(n, k)
        return (q * self.scales[:, :, None] + self.offsets[:, :, None]).reshape(n, k)

    def regroup(self, group: int) -> Int4Matrix:
        """The same matrix with `group` columns per scale, which must divide the current group:
        scales and offsets are repeated, so dequantize() is unchanged."""
        if group <= 0 or self.group % group:
            raise ValueError(f"Int4Matrix.regroup: {group} does not divide the current group {self.group}")
        r = self.group // group
        offsets = None if self.offsets is None else np.repeat(self.offsets, r, axis=1)
        return Int4Matrix(self.q, np.repeat(self.scales, r, axis=1), offsets, group)

    def take_rows(self, order: np.ndarray) -> Int4Matrix:
        """Rows reordered (codes, scales and offsets together), e.g. to undo llama.cpp's Q/K row
        permutation."""
        offsets = None if self.offsets is None else np.ascontiguousarray(self.offsets[order])
        return Int4Matrix(np.ascontiguousarray(self.q[order]), np.ascontiguousarray(self.scales[order]), offsets,
                          self.group)

