"""Round-to-nearest quantizers from float weights to QuantizedMatrix (no calibration data).

    quantize_fp8(w)            E4M3 with one scale per row (group = K), scale = amax / 448
    quantize_int8(w, group=32) symmetric int8 per group of 32 columns (GGUF Q8_0's granularity),
                               scale = amax / 127, values in [-127, 127]

A row or group of zeros gets scale 0 and values 0, so it dequantizes to zeros (never NaN).
"""
from __future__ import annotations

import numpy as np

from .e4m3 import E4M3_MAX, encode_e4m3
from .matrix import QuantizedMatrix

INT8_MAX = 127


def _grouped(w: np.ndarray, group: int | None) -> tuple[np.ndarray, int]:
    """w as float32 [N, K // group, group], and the group (K when None)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize: expected a 2-D weight matrix, not shape {w.shape}")
    n, k = w.shape
    group = k if group is None else int(group)
    if group <= 0 or k % group:
        raise ValueError(f"quantize: group {group} does not divide K = {k}")
    if not np.isfinite(w).all():
        raise ValueError("quantize: the weights hold NaN or infinity")
    return w.reshape(n, k // group, group), group


def _scaled(wg: np.ndarray, qmax: float) -> tuple[np.ndarray, np.ndarray]:
    """(scales [N, G] = amax / qmax, w / scale) with zero groups divided by 1 instead of 0."""
    scales = (np.abs(wg).max(axis=2) / np.float32(qmax)).astype(np.float32)
    safe = np.where(scales == 0, np.float32(1), scales)
    return scales, wg / safe[:, :, None]


def quantize_fp8(w: np.ndarray, group: int | None = None) -> QuantizedMatrix:
    """FP8 E4M3: scale = amax / 448 per row (group = K, the default) or per group of columns;
    q = round-to-nearest-even E4M3 of w / scale, saturating at +-448."""
    wg, group = _grouped(w, group)
    scales, x = _scaled(wg, E4M3_MAX)
    n, g, _ = wg.shape
    return QuantizedMatrix(encode_e4m3(x).reshape(n, g * group), scales, "fp8", group)


def quantize_int8(w: np.ndarray, group: int | None = 32) -> QuantizedMatrix:
    """Symmetric int8: scale = amax / 127 per group of `group` columns (None: per row);
    q = round-half-even of w / scale, clamped to [-127, 127] (-128 is never produced)."""
    wg, group = _grouped(w, group)
    scales, x = _scaled(wg, INT8_MAX)
    q = np.clip(np.rint(x), -INT8_MAX, INT8_MAX).astype(np.int8)
    n, g, _ = wg.shape
    return QuantizedMatrix(q.reshape(n, g * group).view(np.uint8), scales, "int8", group)
