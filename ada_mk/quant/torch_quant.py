"""The quantizers and the 8-bit matrix form in torch, for weights that live on the GPU.

    quantize_fp8_torch(w)             as quantize_fp8: E4M3, scale = amax / 448 per row or group
    quantize_int8_torch(w, group=32)  as quantize_int8: symmetric int8, scale = amax / 127 per group

Both return a QuantizedTensor (q uint8 [N, K], scales float32 [N, K // group]) on w's device whose
codes and scales are bit for bit those of the numpy quantizers (ada_mk.quant.quantize): the same
float32 divisions, and the E4M3 rounding done with the integer operations of encode_e4m3, so no
backend's own float8 conversion decides a tie. torch is imported only when called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .e4m3 import E4M3_MAX
from .matrix import FORMATS, QuantizedMatrix
from .quantize import INT8_MAX


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """QuantizedMatrix's torch twin: q uint8 [N, K] (E4M3 bits or int8 two's complement), scales
    float32 [N, K // group]; W[n, k] = value(q[n, k]) * scales[n, k // group]."""

    q: Any
    scales: Any
    fmt: str
    group: int

    def __post_init__(self) -> None:
        import torch

        if self.fmt not in FORMATS:
            raise ValueError(f"QuantizedTensor: fmt {self.fmt!r}; expected one of {', '.join(FORMATS)}")
        if self.q.dtype != torch.uint8 or self.q.dim() != 2:
            raise ValueError(f"QuantizedTensor: q must be a 2-D uint8 tensor, not {self.q.dtype} {tuple(self.q.shape)}")
        n, k = self.q.shape
        if self.group <= 0 or k % self.group:
            raise ValueError(f"QuantizedTensor: group {self.group} does not divide K = {k}")
        if self.scales.dtype != torch.float32 or tuple(self.scales.shape) != (n, k // self.group):
            raise ValueError(f"QuantizedTensor: scales must be float32 {(n, k // self.group)}, not "
                             f"{self.scales.dtype} {tuple(self.scales.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    @property
    def device(self) -> Any:
        return self.q.device

    def values(self) -> Any:
        """The 8-bit values as float32 [N, K], before scaling (exact)."""
        import torch

        if self.fmt == "fp8":
            return self.q.view(torch.float8_e4m3fn).float()
        return self.q.view(torch.int8).float()

    def dequantize(self) -> Any:
        """W = value(q) x scale as float32 [N, K], one float32 multiplication per element."""
        n, k = self.shape
        v = self.values().reshape(n, k // self.group, self.group)
        return (v * self.scales[:, :, None]).reshape(n, k)

    def regroup(self, group: int) -> QuantizedTensor:
        """The same matrix with `group` columns per scale, which must divide the current group."""
        if group <= 0 or self.group % group:
            raise ValueError(f"QuantizedTensor.regroup: {group} does not divide the current group {self.group}")
        return QuantizedTensor(self.q, self.scales.repeat_interleave(self.group // group, dim=1), self.fmt, group)

    def to(self, device: Any) -> QuantizedTensor:
        return QuantizedTensor(self.q.to(device), self.scales.to(device), self.fmt, self.group)

    @staticmethod
    def from_matrix(m: QuantizedMatrix, device: Any = None) -> QuantizedTensor:
        import torch

        return QuantizedTensor(torch.from_numpy(np.ascontiguousarray(m.q)).to(device),
                               torch.from_numpy(np.ascontiguousarray(m.scales)).to(device), m.fmt, m.group)

    def to_matrix(self) -> QuantizedMatrix:
        return QuantizedMatrix(self.q.cpu().numpy(), self.scales.cpu().numpy(), self.fmt, self.group)


def _grouped(w: Any, group: int | None) -> tuple[Any, int]:
    """w as float32 [N, K // group, group], and the group (K when None)."""
    import torch

    w = w.detach()
    if w.dim() != 2:
        raise ValueError(f"quantize: expected a 2-D weight matrix, not shape {tuple(w.shape)}")
    n, k = w.shape
    group = k if group is None else int(group)
    if group <= 0 or k % group:
        raise ValueError(f"quantize: group {group} does not divide K = {k}")
    return w.to(torch.float32).reshape(n, k // group, group), group


def _scaled(wg: Any, qmax: float) -> tuple[Any, Any]:
    """(scales [N, G] = amax / qmax, w / scale) with zero groups divided by 1 instead of 0."""
    import torch

    amax = wg.abs().amax(dim=2)
    if not bool(torch.isfinite(amax).all()):  # amax is NaN or infinite where a group holds one
        raise ValueError("quantize: the weights hold NaN or infinity")
    scales = amax / torch.tensor(qmax, dtype=torch.float32, device=wg.device)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    return scales, wg / safe[:, :, None]


ROW_BLOCK_ELEMENTS = 1 << 26  # elements quantized at once: bounds the float32 temporaries on the GPU


def encode_e4m3_torch(x: Any) -> Any:
    """E4M3 bit patterns (uint8) of float32 values, exactly as ada_mk.quant.encode_e4m3 (round to
    nearest even, saturating at +-448, NaN to 0x7F with its sign), in int32 arithmetic on the
    float32 bits (every intermediate that is selected stays within int32)."""
    import torch

    x = x.to(torch.float32)
    x = torch.where(torch.isnan(x), x, x.clamp(-E4M3_MAX, E4M3_MAX))
    bits = x.view(torch.int32)
    negative = bits < 0
    mag = bits & 0x7FFFFFFF
    # subnormal range: a float32 add of 2**14 rounds |x| to a multiple of 2**-9 (RNE)
    out = (mag.view(torch.float32) + 2.0 ** 14).view(torch.int32) - (141 << 23)
    # normal range: rebias the exponent 127 -> 7 and round the mantissa to 3 bits (RNE)
    norm = (mag - (120 << 23) + 0x7FFFF + ((mag >> 20) & 1)) >> 20
    out = torch.where(mag < (121 << 23), out, norm)
    out = torch.where(mag >= 0x7F800001, torch.full_like(out, 0x7F), out)
    out = torch.where(negative, out | 0x80, out)
    return out.to(torch.uint8)


def _by_row_blocks(w: Any, group: int | None, one: Any) -> tuple[Any, Any, int]:
    """(q [N, K], scales, group) of one(w_block as [n, G, group]) -> (codes, scales) over blocks of
    rows: every row is quantized on its own, so the blocks change nothing but the peak memory."""
    import torch

    if w.dim() != 2:
        raise ValueError(f"quantize: expected a 2-D weight matrix, not shape {tuple(w.shape)}")
    n, k = w.shape
    step = max(1, ROW_BLOCK_ELEMENTS // max(k, 1))
    qs, ss = [], []
    for r in range(0, max(n, 1), step):
        wg, group = _grouped(w[r:r + step], group)
        q, s = one(wg)
        qs.append(q.reshape(wg.shape[0], k))
        ss.append(s)
    return torch.cat(qs), torch.cat(ss).contiguous(), group


def quantize_fp8_torch(w: Any, group: int | None = None) -> QuantizedTensor:
    """FP8 E4M3 as quantize_fp8 (scale = amax / 448 per row, or per group of columns), on w's device."""
    def one(wg: Any) -> tuple[Any, Any]:
        scales, x = _scaled(wg, E4M3_MAX)
        return encode_e4m3_torch(x), scales

    q, scales, group = _by_row_blocks(w, group, one)
    return QuantizedTensor(q, scales, "fp8", group)


def quantize_int8_torch(w: Any, group: int | None = 32) -> QuantizedTensor:
    """Symmetric int8 as quantize_int8 (scale = amax / 127 per group; round half to even, clamped
    to [-127, 127]), on w's device."""
    import torch

    def one(wg: Any) -> tuple[Any, Any]:
        scales, x = _scaled(wg, INT8_MAX)
        return torch.round(x).clamp(-INT8_MAX, INT8_MAX).to(torch.int8).view(torch.uint8), scales

    q, scales, group = _by_row_blocks(w, group, one)
    return QuantizedTensor(q, scales, "int8", group)
