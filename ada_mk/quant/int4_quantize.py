"""Round-to-nearest 4-bit quantization of float weights into Int4Matrix (no calibration data): how a
bf16 checkpoint becomes int4 on load.

    quantize_int4(w, group=128)                  asymmetric (the default)
        scale  = (max - min) / 15                per row and group of `group` input columns
        zero   = clamp(round(-min / scale), 0, 15)
        q      = clamp(round(w / scale) + zero, 0, 15)
        offset = -(zero * scale)                 so W = q * scale + offset, Int4Matrix's form
    quantize_int4(w, group=32, symmetric=True)   symmetric, Q4_0's rule
        m      = the group's value of largest magnitude (max when |max| >= |min|, else min)
        scale  = m / -8                          (m itself maps to code 0, W = -8 * scale = m)
        q      = clamp(round(w / scale) + 8, 0, 15)

All arithmetic is float32 with round half to even; each step is one IEEE operation, so the torch
twin (ada_mk.quant.int4_torch.quantize_int4_torch) gives the same bits. The asymmetric matrix is
exactly q * scale + offset; compared with the affine (q - zero) * scale computed in float32 it can
differ by the rounding of zero * scale and of the sum: below 2^-19 * scale, far under the step
`scale` itself. A constant group (max == min, zeros included) gets scale 0, codes 0 and offset equal
to its value, so it dequantizes exactly; a symmetric all-zero group gets scale 0 (codes 8).
"""
from __future__ import annotations

import numpy as np

from .int4 import INT4_MAX, SYMMETRIC_ZERO, Int4Matrix

DEFAULT_GROUP = 128


def grouped(w: np.ndarray, group: int) -> np.ndarray:
    """w as float32 [N, K // group, group], checked (2-D, group divides K, finite)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int4: expected a 2-D weight matrix, not shape {w.shape}")
    n, k = w.shape
    if not isinstance(group, int) or group <= 0 or k % group:
        raise ValueError(f"quantize_int4: group {group} does not divide K = {k}")
    if not np.isfinite(w).all():
        raise ValueError("quantize_int4: the weights hold NaN or infinity")
    return w.reshape(n, k // group, group)


def quantize_int4(w: np.ndarray, group: int = DEFAULT_GROUP, symmetric: bool = False) -> Int4Matrix:
    """Round-to-nearest int4 of a float [N, K] matrix with `group` columns per scale (see the module
    docstring for the formulas)."""
    wg = grouped(w, group)
    n, g, _ = wg.shape
    one, top = np.float32(1), np.float32(INT4_MAX)
    lo, hi = wg.min(axis=2), wg.max(axis=2)
    if symmetric:
        m = np.where(hi >= -lo, hi, lo)
        scales = (m / np.float32(-SYMMETRIC_ZERO)).astype(np.float32)
        safe = np.where(scales == 0, one, scales)
        q = np.clip(np.rint(wg / safe[:, :, None]) + np.float32(SYMMETRIC_ZERO), 0, top)
        return Int4Matrix(q.astype(np.uint8).reshape(n, g * group), scales, None, group)
    scales = ((hi - lo) / top).astype(np.float32)
    const = scales == 0
    safe = np.where(const, one, scales)
    zero = np.clip(np.rint(-lo / safe), 0, top)
    q = np.clip(np.rint(wg / safe[:, :, None]) + zero[:, :, None], 0, top)
    q = np.where(const[:, :, None], np.float32(0), q)
    offsets = np.where(const, lo, -(zero * scales)).astype(np.float32)
    return Int4Matrix(q.astype(np.uint8).reshape(n, g * group), scales, offsets, group)
