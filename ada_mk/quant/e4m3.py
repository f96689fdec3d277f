"""FP8 E4M3 ("float8_e4m3fn") bit patterns <-> float32, in NumPy.

E4M3FN has a sign bit, 4 exponent bits (bias 7) and 3 mantissa bits; it has no infinities, and
S.1111.111 (0x7F, 0xFF) is NaN, so its largest finite value is 448 (0x7E). Exponent 0 holds the
subnormals m / 8 * 2**-6. Checkpoints store FP8 weights as these bytes; the kernel half converts them
with the hardware's instructions, and this module is the exact CPU model of both directions, checked
bit for bit against torch.float8_e4m3fn in the tests.
"""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0

# float32 bit-pattern constants of the rounding (the scheme of c10's fp8e4m3fn_from_fp32_value)
_NAN_FROM = np.uint32(0x7F800001)      # the smallest float32 NaN magnitude
_MIN_NORMAL = np.uint32(121 << 23)     # 2**-6: below it the result is subnormal
_DENORM_MAGIC = np.float32(2.0 ** 14)  # adding it leaves the subnormal code in the low bits
_DENORM_BITS = np.uint32(141 << 23)    # its bit pattern
_REBIAS = np.uint32(((7 - 127) << 23) & 0xFFFFFFFF)  # exponent bias 127 -> 7 (wraps, as uint32)


def _decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    val = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1.0 + man / 8.0) * 2.0 ** (exp.astype(np.float64) - 7))
    val = sign * val
    val = np.where((codes & 0x7F) == 0x7F, np.copysign(np.nan, sign), val)  # NaN keeps its sign bit
    return val.astype(np.float32)


E4M3_TABLE = _decode_table()  # code -> float32 value (exact: every E4M3 value is a float32)


def decode_e4m3(codes: np.ndarray) -> np.ndarray:
    """float32 values of E4M3 bit patterns (uint8 array of any shape); 0x7F and 0xFF give NaN
    with that sign."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"E4M3 codes must be uint8, not {codes.dtype}")
    return E4M3_TABLE[codes]


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """E4M3 bit patterns (uint8) of float32 values, rounded to nearest, ties to even, saturating:
    values beyond +-448 and infinities become +-448 (torch 2.13's CPU `.to(torch.float8_e4m3fn)`
    does the same). NaN stays NaN (0x7F with the input's sign bit); -0.0 keeps its sign."""
    x = np.asarray(x, dtype=np.float32)
    x = np.where(np.isnan(x), x, np.clip(x, -E4M3_MAX, E4M3_MAX)).astype(np.float32)
    bits = x.view(np.uint32)
    sign = bits & np.uint32(0x80000000)
    mag = bits ^ sign
    with np.errstate(over="ignore"):
        # subnormal range: a float32 add of 2**14 rounds |x| to a multiple of 2**-9 (RNE)
        sub = ((mag.view(np.float32) + _DENORM_MAGIC).view(np.uint32) - _DENORM_BITS)
        # normal range: rebias the exponent and round the mantissa to 3 bits (RNE)
        odd = (mag >> np.uint32(20)) & np.uint32(1)
        norm = (mag + _REBIAS + np.uint32(0x7FFFF) + odd) >> np.uint32(20)
    out = np.where(mag < _MIN_NORMAL, sub, norm)
    out = np.where(mag >= _NAN_FROM, np.uint32(0x7F), out)
    return (out | (sign >> np.uint32(24))).astype(np.uint8)
