"""QuantizedMatrix: an 8-bit weight matrix with float scales per output row and group of input
columns, the one form every 8-bit source (FP8 safetensors, GGUF Q8_0, the quantizers) is read into.

    m.q        uint8 [N, K]: FP8 E4M3 bit patterns ("fp8") or int8 two's complement ("int8")
    m.scales   float32 [N, K // group]: W[n, k] = value(q[n, k]) * scales[n, k // group]
    m.group    input columns per scale; group == K is one scale per row

One layout for every source keeps the kernel half simple: whatever the checkpoint's scale
granularity (per tensor, per channel, per 128x128 block, per 32 columns), the kernel reads a scale
per row and group. Scales are float32 because every source's scale (fp16, bf16, fp32) widens to
it exactly, so `dequantize()` is exactly the checkpoint's W = q x scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .e4m3 import decode_e4m3

FORMATS = ("fp8", "int8")


@dataclass(frozen=True, eq=False)
class QuantizedMatrix:
    q: np.ndarray
    scales: np.ndarray
    fmt: str
    group: int

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"QuantizedMatrix: fmt {self.fmt!r}; expected one of {', '.join(FORMATS)}")
        if self.q.dtype != np.uint8 or self.q.ndim != 2:
            raise ValueError(f"QuantizedMatrix: q must be a 2-D uint8 array, not {self.q.dtype} {self.q.shape}")
        n, k = self.q.shape
        if self.group <= 0 or k % self.group:
            raise ValueError(f"QuantizedMatrix: group {self.group} does not divide K = {k}")
        if self.scales.dtype != np.float32 or self.scales.shape != (n, k // self.group):
            raise ValueError(f"QuantizedMatrix: scales must be float32 {(n, k // self.group)}, not "
                             f"{self.scales.dtype} {self.scales.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    @property
    def nbytes(self) -> int:
        """Bytes of the 8-bit values plus their float32 scales."""
        return int(self.q.nbytes + self.scales.nbytes)

    def values(self) -> np.ndarray:
        """The 8-bit values as float32 [N, K], before scaling (exact)."""
        if self.fmt == "fp8":
            return decode_e4m3(self.q)
        return self.q.view(np.int8).astype(np.float32)

    def dequantize(self) -> np.ndarray:
        """W = value(q) x scale as float32 [N, K], one float32 multiplication per element."""
        n, k = self.shape
        v = self.values().reshape(n, k // self.group, self.group)
        return (v * self.scales[:, :, None]).reshape(n, k)

    def regroup(self, group: int) -> QuantizedMatrix:
        """The same matrix with `group` columns per scale, which must divide the current group:
        each scale is repeated, so the values (and dequantize()) are unchanged."""
        if group <= 0 or self.group % group:
            raise ValueError(f"QuantizedMatrix.regroup: {group} does not divide the current group {self.group}")
        scales = np.repeat(self.scales, self.group // group, axis=1)
        return QuantizedMatrix(self.q, scales, self.fmt, group)

    def take_rows(self, order: np.ndarray) -> QuantizedMatrix:
        """Rows reordered (q and scales together), e.g. to undo a checkpoint's row permutation."""
        return QuantizedMatrix(np.ascontiguousarray(self.q[order]), np.ascontiguousarray(self.scales[order]),
                               self.fmt, self.group)
