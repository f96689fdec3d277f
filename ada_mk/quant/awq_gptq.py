"""AWQ and GPTQ 4-bit safetensors tensors -> Int4Matrix, and their config.json
`quantization_config`.

Layouts read (W is the [out, in] weight of a linear `X`; g the group size along `in`):
  AWQ (quant_method "awq", version "gemm", zero_point true; AutoAWQ's GEMM checkpoints):
    X.qweight int32 [in, out / 8]     8 codes per word along `out`; nibble i (bits 4i .. 4i + 3)
                                      of word j holds column 8j + AWQ_ORDER[i]
    X.qzeros  int32 [in / g, out / 8] the zero points, packed the same way
    X.scales  fp16  [in / g, out]
    W[o, i] = (q[i, o] - z[i // g, o]) * s[i // g, o]
  GPTQ (quant_method "gptq"; AutoGPTQ / GPTQModel, checkpoint_format "gptq" or "gptq_v2"):
    X.qweight int32 [in / 8, out]     nibble i of word r holds input row 8r + i
    X.qzeros  int32 [in / g, out / 8] nibble i of word j holds column 8j + i; the classic format
                                      ("gptq", v1) stores zero - 1, "gptq_v2" the zero itself
    X.scales  fp16  [in / g, out]
    X.g_idx   int32 [in]              must be i // g: act-order (desc_act) checkpoints, whose rows
                                      are grouped out of order, are refused
    W[o, i] = (q[i, o] - z[g_idx[i], o]) * s[g_idx[i], o]

Both become the asymmetric Int4Matrix form with scale s and offset -(z * s), transposed to
[out, in]; GPTQ with sym true (every zero 8) becomes the symmetric form. For fp16 (or bf16) scales
this is exact: z * s and q * s are exact in float32 (11 significant bits times 5) and so is their
difference, so dequantize() is the exact (q - z) * s. AutoAWQ and AutoGPTQ compute it in fp16,
which rounds that value once to fp16 (at most half an fp16 ulp, relative 2^-11): our float32 value
rounded to fp16 is theirs bit for bit. float32 scales are read too, but there z * s and the sum can
each round (at most half a float32 ulp of 15 * s apiece).

A GPTQ v1 zero nibble of 15 (zero point 16 after the +1) is refused: GPTQ's packer writes a zero
point of 0 as -1, which fills the word's higher nibbles with ones, so such zeros are not readable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import QuantFormatError
from .int4 import SYMMETRIC_ZERO, Int4Matrix

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i] of its 8
SEQUENTIAL = tuple(range(8))
AWQ_VERSIONS = ("gemm",)
GPTQ_FORMATS = ("gptq", "gptq_v2")


@dataclass(frozen=True)
class Int4Scheme:
    """How an AWQ or GPTQ checkpoint stores its 4-bit weights."""
    method: str          # "awq" or "gptq"
    group: int           # input rows per scale; -1: the whole input dimension (GPTQ)
    symmetric: bool      # GPTQ sym: every zero point is 8
    zeros_minus_one: bool  # GPTQ v1: qzeros holds zero - 1

    def describe(self) -> str:
        g = "per column" if self.group == -1 else f"group {self.group}"
        return f"{self.method.upper()} int4 ({g}{', symmetric' if self.symmetric else ''})"

    def group_for(self, k: int) -> int:
        return k if self.group == -1 else self.group


def _err(field: str, value: Any, why: str) -> QuantFormatError:
    return QuantFormatError(f"quantization_config.{field} = {value!r}: {why}")


def _flag(qc: Mapping[str, Any], field: str, default: bool) -> bool:
    v = qc.get(field, default)
    if not isinstance(v, bool):
        raise _err(field, v, "expected true or false")
    return v


def int4_scheme(qc: Any) -> Int4Scheme:
    """The scheme of an AWQ or GPTQ `quantization_config` (config.json). Raises QuantFormatError,
    one line naming the field, for any other method or setting."""
    if not isinstance(qc, Mapping):
        raise QuantFormatError(f"quantization_config = {qc!r}: expected a mapping")
    method = qc.get("quant_method")
    if method not in ("awq", "gptq"):
        raise _err("quant_method", method, "expected 'awq' or 'gptq' for 4-bit weights")
    bits = qc.get("bits")
    if bits != 4 or isinstance(bits, bool):
        raise _err("bits", bits, "unsupported; ada-mk reads 4-bit AWQ / GPTQ weights")
    group = qc.get("group_size")
    if not isinstance(group, int) or isinstance(group, bool) or not (group > 0 or (group == -1 and method == "gptq")):
        raise _err("group_size", group, "expected a positive integer" + (" or -1" if method == "gptq" else ""))
    if method == "awq":
        version = qc.get("version", "gemm")
        if not isinstance(version, str) or version.lower() not in AWQ_VERSIONS:
            raise _err("version", version, "unsupported AWQ layout; ada-mk reads 'gemm'")
        if not _flag(qc, "zero_point", True):
            raise _err("zero_point", False, "AWQ without zero points is unsupported")
        return Int4Scheme("awq", group, symmetric=False, zeros_minus_one=False)
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in GPTQ_FORMATS:
        raise _err("checkpoint_format", fmt, f"unsupported GPTQ format; expected one of {', '.join(GPTQ_FORMATS)}")
    _flag(qc, "desc_act", False)  # act order is checked per tensor, on its g_idx
    return Int4Scheme("gptq", group, symmetric=_flag(qc, "sym", True), zeros_minus_one=fmt == "gptq")


def unpack_nibbles(words: np.ndarray, order: tuple[int, ...] = SEQUENTIAL) -> np.ndarray:
    """int32 words [..., M] -> uint8 codes [..., 8 M] along the last axis: code 8 j + order[i] is
    nibble i (bits 4i .. 4i + 3) of word j."""
    w = np.ascontiguousarray(words).view(np.uint32)
    nib = ((w[..., None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF).astype(np.uint8)
    out = np.empty_like(nib)
    out[..., list(order)] = nib
    return out.reshape(*w.shape[:-1], w.shape[-1] * 8)


def _int32(a: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.int32, np.uint32):
        raise QuantFormatError(f"tensor {name!r} has dtype {a.dtype}; expected int32")
    if a.shape != shape:
        raise QuantFormatError(f"tensor {name!r} has shape {list(a.shape)}; expected {list(shape)}")
    return a


def _scales(s: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    s = np.asarray(s)
    if s.dtype.kind != "f":
        raise QuantFormatError(f"tensor {name!r} has dtype {s.dtype}; expected fp16 (or another float)")
    if s.shape != shape:
        raise QuantFormatError(f"tensor {name!r} has shape {list(s.shape)}; expected {list(shape)}")
    s = s.astype(np.float32)
    if not np.isfinite(s).all():
        raise QuantFormatError(f"tensor {name!r} holds NaN or infinity")
    return s


def _dims(qweight: np.ndarray, scales: np.ndarray, prefix: str, awq: bool) -> tuple[int, int]:
    """(in, out) of a packed linear, from its qweight and scales shapes."""
    qw, s = np.shape(qweight), np.shape(scales)
    if len(qw) != 2 or len(s) != 2:
        raise QuantFormatError(f"tensor {prefix + '.qweight'!r} has shape {list(qw)} (scales {list(s)}); "
                               "expected 2-D tensors")
    return (int(qw[0]), int(s[1])) if awq else (int(qw[0]) * 8, int(s[1]))


def _matrix(q_t: np.ndarray, z: np.ndarray | None, s: np.ndarray, group: int) -> Int4Matrix:
    """Int4Matrix [out, in] from codes q_t [in, out] and per-group zeros / scales [in / g, out]
    (zeros None: symmetric, zero point 8)."""
    scales = np.ascontiguousarray(s.T)
    offsets = None if z is None else np.ascontiguousarray(-(z.T.astype(np.float32) * scales))
    return Int4Matrix(np.ascontiguousarray(q_t.T), scales, offsets, group)


def awq_matrix(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, scheme: Int4Scheme,
               prefix: str = "layer") -> Int4Matrix:
    """The Int4Matrix [out, in] of AWQ GEMM tensors `prefix`.qweight / .qzeros / .scales."""
    k, n = _dims(qweight, scales, prefix, awq=True)
    g = scheme.group_for(k)
    if n % 8 or k % g:
        raise QuantFormatError(f"tensor {prefix + '.qweight'!r}: a {k} x {n} (in x out) AWQ weight needs out a "
                               f"multiple of 8 and in a multiple of group_size {g}")
    qw = _int32(qweight, prefix + ".qweight", (k, n // 8))
    qz = _int32(qzeros, prefix + ".qzeros", (k // g, n // 8))
    s = _scales(scales, prefix + ".scales", (k // g, n))
    return _matrix(unpack_nibbles(qw, AWQ_ORDER), unpack_nibbles(qz, AWQ_ORDER), s, g)


def gptq_matrix(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None,
                scheme: Int4Scheme, prefix: str = "layer") -> Int4Matrix:
    """The Int4Matrix [out, in] of GPTQ tensors `prefix`.qweight / .qzeros / .scales / .g_idx
    (g_idx None: taken as i // group)."""
    k, n = _dims(qweight, scales, prefix, awq=False)
    g = scheme.group_for(k)
    if n % 8 or k % g:
        raise QuantFormatError(f"tensor {prefix + '.qweight'!r}: a {k} x {n} (in x out) GPTQ weight needs out a "
                               f"multiple of 8 and in a multiple of group_size {g}")
    qw = _int32(qweight, prefix + ".qweight", (k // 8, n))
    qz = _int32(qzeros, prefix + ".qzeros", (k // g, n // 8))
    s = _scales(scales, prefix + ".scales", (k // g, n))
    if g_idx is not None:
        gi = np.asarray(g_idx)
        if gi.shape != (k,) or gi.dtype.kind not in "iu":
            raise QuantFormatError(f"tensor {prefix + '.g_idx'!r} has shape {list(gi.shape)} {gi.dtype}; "
                                   f"expected int32 [{k}]")
        if not np.array_equal(gi, np.arange(k) // g):
            raise QuantFormatError(f"tensor {prefix + '.g_idx'!r} is not i // group_size ({g}): an act-order "
                                   "(desc_act) checkpoint, which ada-mk does not read; quantize with desc_act=false")
    # codes: nibble i of qweight[r, o] is input row 8r + i
    w = np.ascontiguousarray(qw).view(np.uint32)
    q_t = ((w[:, None, :] >> (np.arange(8, dtype=np.uint32) * 4)[None, :, None]) & 0xF).astype(np.uint8)
    z = unpack_nibbles(qz).astype(np.int32)
    if scheme.zeros_minus_one:
        if (z == 15).any():
            raise QuantFormatError(f"tensor {prefix + '.qzeros'!r} holds a stored zero of 15 (zero point 16 in the "
                                   "GPTQ v1 format, which stores zero - 1): a wrapped zero point of 0, unreadable")
        z = z + 1
    if scheme.symmetric:
        if (z != SYMMETRIC_ZERO).any():
            raise QuantFormatError(f"tensor {prefix + '.qzeros'!r} holds zero points other than "
                                   f"{SYMMETRIC_ZERO} although quantization_config.sym is true")
        return _matrix(q_t.reshape(k, n), None, s, g)
    return _matrix(q_t.reshape(k, n), z, s, g)


def int4_matrix(tensors: Mapping[str, np.ndarray], prefix: str, scheme: Int4Scheme) -> Int4Matrix:
    """The Int4Matrix of linear `prefix` from its tensors (`tensors[prefix + ".qweight"]`, ...)."""
    def get(suffix: str, required: bool = True) -> np.ndarray | None:
        name = f"{prefix}.{suffix}"
        if name not in tensors:
            if required:
                raise QuantFormatError(f"tensor {name!r} is missing ({scheme.describe()} needs qweight, qzeros "
                                       "and scales)")
            return None
        return tensors[name]

    if scheme.method == "awq":
        return awq_matrix(get("qweight"), get("qzeros"), get("scales"), scheme, prefix)
    return gptq_matrix(get("qweight"), get("qzeros"), get("scales"), get("g_idx", False), scheme, prefix)
