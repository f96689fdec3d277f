"""Int4Matrix and quantize_int4 in torch, for weights that live on the GPU.

    quantize_int4_torch(w, group=128, symmetric=False)   as ada_mk.quant.quantize_int4

returns an Int4Tensor on w's device whose codes, scales and offsets are bit for bit those of the
numpy quantizer: the same float32 operations one by one (min, max, one division, round half to
even, clamp, one multiplication), none fused. torch is imported only when called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .int4 import INT4_MAX, SYMMETRIC_ZERO, Int4Matrix
from .int4_quantize import DEFAULT_GROUP

ROW_BLOCK_ELEMENTS = 1 << 26  # elements quantized at once: bounds the float32 temporaries on the GPU


@dataclass(frozen=True, eq=False)
class Int4Tensor:
    """Int4Matrix's torch twin: q uint8 [N, K] codes 0..15, scales float32 [N, K // group],
    offsets float32 [N, K // group] or None; W = q * scale + offset, or (q - 8) * scale."""

    q: Any
    scales: Any
    offsets: Any
    group: int

    def __post_init__(self) -> None:
        import torch

        if self.q.dtype != torch.uint8 or self.q.dim() != 2:
            raise ValueError(f"Int4Tensor: q must be a 2-D uint8 tensor, not {self.q.dtype} {tuple(self.q.shape)}")
        n, k = self.q.shape
        if self.group <= 0 or k % self.group:
            raise ValueError(f"Int4Tensor: group {self.group} does not divide K = {k}")
        want = (n, k // self.group)
        for what, t in (("scales", self.scales), ("offsets", self.offsets)):
            if t is not None and (t.dtype != torch.float32 or tuple(t.shape) != want):
                raise ValueError(f"Int4Tensor: {what} must be float32 {want}, not {t.dtype} {tuple(t.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    @property
    def symmetric(self) -> bool:
        return self.offsets is None

    def dequantize(self) -> Any:
        """W as float32 [N, K], the same float32 operations as Int4Matrix.dequantize."""
        n, k = self.shape
        q = self.q.reshape(n, k // self.group, self.group).float()
        if self.offsets is None:
            return ((q - SYMMETRIC_ZERO) * self.scales[:, :, None]).reshape(n, k)
        return (q * self.scales[:, :, None] + self.offsets[:, :, None]).reshape(n, k)

    def to(self, device: Any) -> Int4Tensor:
        off = None if self.offsets is None else self.offsets.to(device)
        return Int4Tensor(self.q.to(device), self.scales.to(device), off, self.group)

    @staticmethod
    def from_matrix(m: Int4Matrix, device: Any = None) -> Int4Tensor:
        import torch

        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return Int4Tensor(t(m.q), t(m.scales), None if m.offsets is None else t(m.offsets), m.group)

    def to_matrix(self) -> Int4Matrix:
        off = None if self.offsets is None else self.offsets.cpu().numpy()
        return Int4Matrix(self.q.cpu().numpy(), self.scales.cpu().numpy(), off, self.group)


def _one(wg: Any, symmetric: bool) -> tuple[Any, Any, Any]:
    """(codes [n, G, group], scales, offsets or None) of float32 groups wg [n, G, group]."""
    import torch

    top = torch.tensor(float(INT4_MAX), dtype=torch.float32, device=wg.device)
    lo, hi = wg.amin(dim=2), wg.amax(dim=2)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("quantize_int4: the weights hold NaN or infinity")
    if symmetric:
        m = torch.where(hi >= -lo, hi, lo)
        scales = m / torch.tensor(-float(SYMMETRIC_ZERO), dtype=torch.float32, device=wg.device)
        safe = torch.where(scales == 0, torch.ones_like(scales), scales)
        q = (torch.round(wg / safe[:, :, None]) + SYMMETRIC_ZERO).clamp(0, INT4_MAX)
        return q.to(torch.uint8), scales, None
    scales = (hi - lo) / top
    const = scales == 0
    safe = torch.where(const, torch.ones_like(scales), scales)
    zero = torch.round(-lo / safe).clamp(0, INT4_MAX)
    q = (torch.round(wg / safe[:, :, None]) + zero[:, :, None]).clamp(0, INT4_MAX)
    q = torch.where(const[:, :, None], torch.zeros_like(q), q)
    offsets = torch.where(const, lo, -(zero * scales))
    return q.to(torch.uint8), scales, offsets


def quantize_int4_torch(w: Any, group: int = DEFAULT_GROUP, symmetric: bool = False) -> Int4Tensor:
    """Round-to-nearest int4 as quantize_int4, on w's device, in blocks of rows (each row is
    quantized on its own, so the blocks change only the peak memory)."""
    import torch

    w = w.detach()
    if w.dim() != 2:
        raise ValueError(f"quantize_int4: expected a 2-D weight matrix, not shape {tuple(w.shape)}")
    n, k = w.shape
    if not isinstance(group, int) or group <= 0 or k % group:
        raise ValueError(f"quantize_int4: group {group} does not divide K = {k}")
    step = max(1, ROW_BLOCK_ELEMENTS // max(k, 1))
    qs, ss, os_ = [], [], []
    for r in range(0, n, step):
        wg = w[r:r + step].to(torch.float32).reshape(-1, k // group, group)
        q, s, o = _one(wg, symmetric)
        qs.append(q.reshape(-1, k))
        ss.append(s)
        os_.append(o)
    if n == 0:
        empty = torch.zeros((0, k // group), dtype=torch.float32, device=w.device)
        return Int4Tensor(torch.zeros((0, k), dtype=torch.uint8, device=w.device), empty,
                          None if symmetric else empty.clone(), group)
    offsets = None if symmetric else torch.cat(os_).contiguous()
    return Int4Tensor(torch.cat(qs), torch.cat(ss).contiguous(), offsets, group)
