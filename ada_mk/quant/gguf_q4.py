"""GGUF Q4_0, Q4_1 and Q4_K blocks -> Int4Matrix, from the raw bytes (no dequantization on the way).

Block layouts (llama.cpp's ggml-common.h; little-endian fp16 fields):
  Q4_0  18 bytes per 32 weights: d, qs[16]              W = (q - 8) * d
  Q4_1  20 bytes per 32 weights: d, m, qs[16]           W = q * d + m
  Q4_K  144 bytes per 256 weights: d, dmin, scales[12], qs[128]; 8 sub-blocks of 32 weights, each
        with a 6-bit scale sc and a 6-bit minimum mn packed in scales[12]
                                                        W = q * (d * sc) - dmin * mn
In Q4_0 / Q4_1 byte j of qs holds weight j (low nibble) and weight j + 16 (high nibble). In Q4_K
the 128 bytes are 4 runs of 32: run r's low nibbles are sub-block 2r, its high nibbles 2r + 1.

All three are read exactly, bit for bit what gguf.quants.dequantize computes: Q4_0 becomes the
symmetric form with scale d; Q4_1 the asymmetric form with scale d and offset m; Q4_K the
asymmetric form with group 32, scale d * sc and offset -(dmin * mn), both products exact in float32
(an fp16 value times an integer below 64), so q * scale + offset is the reference's d * q - dm.
"""
from __future__ import annotations

import numpy as np

from .errors import QuantFormatError
from .int4 import Int4Matrix

Q4_GROUP = 32
QK_K = 256
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
BLOCK_WEIGHTS = {"Q4_0": Q4_GROUP, "Q4_1": Q4_GROUP, "Q4_K": QK_K}
INT4_TYPES = tuple(BLOCK_BYTES)


def _blocks(raw: np.ndarray, shape: tuple[int, int], qtype: str, name: str) -> np.ndarray:
    """The raw bytes as uint8 [N, K / block, block bytes], checked against `shape`."""
    n, k = shape
    per = BLOCK_WEIGHTS[qtype]
    if k % per:
        raise QuantFormatError(f"tensor {name!r}: {qtype} rows of {k} weights are not whole blocks of {per}")
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != n * (k // per) * BLOCK_BYTES[qtype]:
        raise QuantFormatError(f"tensor {name!r}: {raw.size} bytes of {qtype} data do not hold a {n} x {k} matrix")
    return raw.reshape(n, k // per, BLOCK_BYTES[qtype])


def _fp16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte `at` of every block, widened to float32 (exact) [N, blocks]."""
    return np.ascontiguousarray(blocks[:, :, at:at + 2]).view("<f2")[:, :, 0].astype(np.float32)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """uint8 [..., 16] -> codes [..., 32]: low nibbles first, then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def q4_0_matrix(raw: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Int4Matrix:
    """The symmetric Int4Matrix (group 32, scale d) of a Q4_0 tensor's raw bytes for [N, K]."""
    b = _blocks(raw, shape, "Q4_0", name)
    n, k = shape
    return Int4Matrix(_nibbles_32(b[:, :, 2:]).reshape(n, k), _fp16(b, 0), None, Q4_GROUP)


def q4_1_matrix(raw: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Int4Matrix:
    """The asymmetric Int4Matrix (group 32, scale d, offset m) of a Q4_1 tensor's raw bytes."""
    b = _blocks(raw, shape, "Q4_1", name)
    n, k = shape
    return Int4Matrix(_nibbles_32(b[:, :, 4:]).reshape(n, k), _fp16(b, 0), _fp16(b, 2), Q4_GROUP)


def q4_k_scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit (scales, minimums) [..., 8] of Q4_K's 12 packed bytes [..., 12]: sub-blocks 0-3
    keep the low 6 bits of bytes 0-3 (scale) and 4-7 (minimum); sub-blocks 4-7 take their low 4
    bits from bytes 8-11 (scale: low nibble, minimum: high nibble) and their top 2 bits from the
    top 2 bits of bytes 0-3 (scale) and 4-7 (minimum)."""
    d, m, md = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def q4_k_matrix(raw: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Int4Matrix:
    """The asymmetric Int4Matrix (group 32: the sub-blocks) of a Q4_K tensor's raw bytes:
    scale = d * sc and offset = -(dmin * mn), both exact in float32."""
    b = _blocks(raw, shape, "Q4_K", name)
    n, k = shape
    nb = k // QK_K
    d, dmin = _fp16(b, 0), _fp16(b, 2)
    sc, mn = q4_k_scale_min(b[:, :, 4:16])
    scales = (d[:, :, None] * sc.astype(np.float32)).reshape(n, nb * 8)
    offsets = -(dmin[:, :, None] * mn.astype(np.float32)).reshape(n, nb * 8)
    qs = b[:, :, 16:].reshape(n, nb, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=3).reshape(n, k)  # run r: sub-blocks 2r, 2r + 1
    return Int4Matrix(q, scales, offsets, Q4_GROUP)


READERS = {"Q4_0": q4_0_matrix, "Q4_1": q4_1_matrix, "Q4_K": q4_k_matrix}


def gguf_int4_matrix(raw: np.ndarray, qtype: str, shape: tuple[int, int], name: str = "tensor") -> Int4Matrix:
    """The Int4Matrix of a GGUF tensor of type `qtype` ("Q4_0", "Q4_1" or "Q4_K"; the GGML type
    name) from its raw bytes, for a matrix of `shape` [N, K]."""
    if qtype not in READERS:
        raise QuantFormatError(f"tensor {name!r}: GGUF type {qtype} has no int4 form; expected one of "
                               f"{', '.join(INT4_TYPES)}")
    return READERS[qtype](raw, shape, name)


def _fp16_exact(a: np.ndarray, what: str) -> np.ndarray:
    h = a.astype("<f2")
    if not np.array_equal(h.astype(np.float32), a, equal_nan=True):
        raise ValueError(f"GGUF stores fp16 {what}; these {what} are not all fp16 values")
    return h


def q4_bytes(m: Int4Matrix, qtype: str) -> np.ndarray:
    """The GGUF bytes (uint8 [N, K / 32 * block bytes]) of a group-32 Int4Matrix with fp16 scales
    (and offsets) as q4_0_matrix ("Q4_0": symmetric) or q4_1_matrix ("Q4_1": asymmetric) return:
    their exact inverse, e.g. for writing test files."""
    if qtype not in ("Q4_0", "Q4_1") or m.group != Q4_GROUP or m.symmetric != (qtype == "Q4_0"):
        raise ValueError(f"{qtype} bytes need a {'symmetric' if qtype == 'Q4_0' else 'asymmetric'} Int4Matrix with "
                         f"group {Q4_GROUP}, not {'symmetric' if m.symmetric else 'asymmetric'} group {m.group}")
    n, k = m.shape
    nb = k // Q4_GROUP
    fields = [_fp16_exact(m.scales, "scales")]
    if m.offsets is not None:
        fields.append(_fp16_exact(m.offsets, "offsets"))
    q = m.q.reshape(n, nb, Q4_GROUP)
    qs = q[:, :, :16] | (q[:, :, 16:] << 4)
    parts = [f.view(np.uint8).reshape(n, nb, 2) for f in fields] + [qs]
    return np.concatenate(parts, axis=2).reshape(n, -1)
