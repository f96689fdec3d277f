"""The quantized safetensors layouts ada_mk reads, from config.json's `quantization_config`, and
their scale tensors turned into QuantizedMatrix's per-row-and-group scales.

Read (weights only; activations and the KV cache run in bf16, so `input_scale`, `k_scale` and
`v_scale` tensors are ignored):
  - compressed-tensors (quant_method "compressed-tensors"), format "float-quantized" or the older
    "naive-quantized", with 8-bit float weights: `X.weight` float8_e4m3fn [out, in] and
    `X.weight_scale` per tensor [1], per channel [out, 1], per group [out, in / g] or per block
    [ceil(out / bo), ceil(in / bi)] (`block_structure`); W = q x scale.
  - FP8 as DeepSeek and Qwen publish it (quant_method "fp8"): with `weight_block_size` [bo, bi],
    `X.weight_scale_inv` fp32 [ceil(out / bo), ceil(in / bi)], multiplied despite its name; without
    it, `X.weight_scale` per tensor (AutoFP8's layout).
Scales may be fp32, bf16 or fp16 (all widen to float32 exactly). Everything else quantized (AWQ,
GPTQ, bitsandbytes, other compressed-tensors formats, E5M2, int8 weights) raises QuantFormatError.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import QuantFormatError
from .matrix import QuantizedMatrix

# compressed-tensors formats that store 8-bit float weights as float8_e4m3fn with a scale tensor
# ("naive-quantized": the older name, as in the first published FP8 checkpoints).
CT_FORMATS = ("float-quantized", "naive-quantized")
# Tensors that only quantized checkpoints carry: a weight's scale, and activation / KV-cache scales.
SCALE_TENSOR = re.compile(r"\.(weight_scale|weight_scale_inv|input_scale|k_scale|v_scale)$")
IGNORED_SCALES = re.compile(r"\.(input_scale|k_scale|v_scale)$")


@dataclass(frozen=True)
class FP8Scheme:
    """How a checkpoint stores its FP8 weights: the scale tensor's suffix and the block or group
    a scale may cover (None: per tensor or per channel only)."""
    method: str        # "compressed-tensors" or "fp8"
    scale_suffix: str  # "weight_scale" or "weight_scale_inv"
    block: tuple[int, int] | None = None
    group: int | None = None

    def describe(self) -> str:
        if self.block:
            return f"FP8 E4M3 ({self.method}, {self.block[0]}x{self.block[1]} blocks)"
        if self.group:
            return f"FP8 E4M3 ({self.method}, groups of {self.group})"
        return f"FP8 E4M3 ({self.method})"


def _err(field: str, value: Any, why: str) -> QuantFormatError:
    return QuantFormatError(f"quantization_config.{field} = {value!r}: {why}")


def _block(value: Any, field: str) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise _err(field, value, "expected two positive integers [rows, columns]")
    return int(value[0]), int(value[1])


def _compressed_tensors(qc: Mapping[str, Any]) -> FP8Scheme:
    fmt = qc.get("format")
    if fmt not in CT_FORMATS:
        raise _err("format", fmt, "unsupported compressed-tensors format; ada-mk reads 'float-quantized' "
                   "(FP8 E4M3 weights)")
    groups = qc.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise _err("config_groups", groups, "expected a mapping of quantization groups")
    block: tuple[int, int] | None = None
    group: int | None = None
    for gname, g in groups.items():
        where = f"config_groups.{gname}"
        if not isinstance(g, Mapping):
            raise _err(where, g, "expected a mapping")
        if g.get("format") not in (None, *CT_FORMATS):
            raise _err(f"{where}.format", g.get("format"), "unsupported compressed-tensors format; ada-mk reads "
                       "'float-quantized' (FP8 E4M3 weights)")
        w = g.get("weights")
        if not isinstance(w, Mapping):
            raise _err(f"{where}.weights", w, "expected the weights' quantization arguments")
        if w.get("type") != "float" or w.get("num_bits") != 8:
            raise _err(f"{where}.weights", f"{w.get('type')} {w.get('num_bits')}-bit",
                       "unsupported; ada-mk reads 8-bit float (FP8 E4M3) weights")
        if w.get("symmetric", True) is not True:
            raise _err(f"{where}.weights.symmetric", w.get("symmetric"), "asymmetric FP8 is unsupported")
        if w.get("dynamic", False) not in (False, None):
            raise _err(f"{where}.weights.dynamic", w.get("dynamic"), "dynamic weight scales are unsupported")
        strategy = w.get("strategy", "tensor")
        if strategy == "block":
            block = _block(w.get("block_structure"), f"{where}.weights.block_structure")
        elif strategy == "group":
            gs = w.get("group_size")
            if not isinstance(gs, int) or isinstance(gs, bool) or gs <= 0:
                raise _err(f"{where}.weights.group_size", gs, "expected a positive integer")
            group = gs
        elif strategy not in ("tensor", "channel"):
            raise _err(f"{where}.weights.strategy", strategy, "unsupported; expected tensor, channel, group or block")
    return FP8Scheme("compressed-tensors", "weight_scale", block, group)


def _fp8(qc: Mapping[str, Any]) -> FP8Scheme:
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise _err("fmt", fmt, "unsupported FP8 format; ada-mk reads e4m3 (float8_e4m3fn)")
    if qc.get("weight_block_size") is not None:
        return FP8Scheme("fp8", "weight_scale_inv", _block(qc["weight_block_size"], "weight_block_size"))
    return FP8Scheme("fp8", "weight_scale")


def fp8_scheme(qc: Any) -> FP8Scheme | None:
    """The FP8 scheme a config.json's `quantization_config` describes; None when there is none.
    Raises QuantFormatError (one line, naming the field) for any other quantization."""
    if qc is None:
        return None
    if not isinstance(qc, Mapping):
        raise QuantFormatError(f"quantization_config = {qc!r}: expected a mapping")
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    if method == "fp8":
        return _fp8(qc)
    raise _err("quant_method", method, "unsupported quantization; ada-mk reads FP8 E4M3 checkpoints "
               "(compressed-tensors 'float-quantized', or 'fp8' with weight_scale / weight_scale_inv) "
               "and bf16/fp16/fp32 weights")


def scale_name(weight: str, scheme: FP8Scheme) -> str:
    """The name of weight `weight`'s scale tensor ("X.weight" -> "X.weight_scale" or "X.weight_scale_inv")."""
    return weight[: -len("weight")] + scheme.scale_suffix


def scale_layout(scale_shape: tuple[int, ...], shape: tuple[int, int], scheme: FP8Scheme, name: str) -> str:
    """Which layout a scale tensor of `scale_shape` has for weight `name` of `shape` [N, K]:
    "tensor", "channel", "block" or "group". Raises QuantFormatError when it fits none (so a
    checkpoint's scales can be checked from its header, before any data is read)."""
    n, k = shape
    ss = tuple(int(d) for d in scale_shape)
    blocks = None if scheme.block is None else (math.ceil(n / scheme.block[0]), math.ceil(k / scheme.block[1]))
    if ss in ((), (1,)) or (ss == (1, 1) and blocks in (None, (1, 1))):
        return "tensor"
    if ss in ((n, 1), (n,)):
        return "channel"
    if blocks is not None and ss == blocks:
        return "block"
    if scheme.group is not None and k % scheme.group == 0 and ss == (n, k // scheme.group):
        return "group"
    want = ["[1]", f"[{n}, 1]"]
    if scheme.block is not None:
        want.append(f"{list(blocks)} ({scheme.block[0]}x{scheme.block[1]} blocks)")
    if scheme.group is not None:
        want.append(f"[{n}, {k // scheme.group}] (groups of {scheme.group})")
    raise QuantFormatError(f"tensor {scale_name(name, scheme)!r} has shape {list(ss)}, which does not fit weight "
                           f"{name!r} {[n, k]} under {scheme.describe()}; expected {' or '.join(want)}")


def row_scales(scale: np.ndarray, shape: tuple[int, int], scheme: FP8Scheme, name: str
               ) -> tuple[np.ndarray, int]:
    """A checkpoint's scale tensor for weight `name` of `shape` [N, K] as (float32 [N, K // g], g).

    Per tensor and per channel give g = K. A [bo, bi] block scale gives g = gcd(bi, K) (bi itself
    when it divides K), each block's scale repeated over its rows and groups; a group scale gives
    its group."""
    n, k = shape
    s = np.asarray(scale, dtype=np.float32)
    layout = scale_layout(s.shape, shape, scheme, name)
    if not np.isfinite(s).all():
        raise QuantFormatError(f"tensor {scale_name(name, scheme)!r} holds NaN or infinity")
    if layout == "tensor":
        return np.full((n, 1), s.reshape(()), np.float32), k
    if layout == "channel":
        return s.reshape(n, 1).copy(), k
    if layout == "block":
        bo, bi = scheme.block  # type: ignore[misc]
        g = math.gcd(bi, k)
        rows = np.repeat(s, bo, axis=0)[:n]
        cols = (np.arange(k // g) * g) // bi
        return np.ascontiguousarray(rows[:, cols]), g
    return s.copy(), int(scheme.group)  # type: ignore[arg-type]


def fp8_matrix(q: np.ndarray, scale: np.ndarray, scheme: FP8Scheme, name: str) -> QuantizedMatrix:
    """QuantizedMatrix of an FP8 weight (uint8 E4M3 bits [N, K]) and its checkpoint scale tensor."""
    if q.ndim != 2:
        raise QuantFormatError(f"tensor {name!r} is FP8 with shape {list(q.shape)}; expected a 2-D matrix")
    scales, group = row_scales(scale, (int(q.shape[0]), int(q.shape[1])), scheme, name)
    return QuantizedMatrix(np.ascontiguousarray(q, dtype=np.uint8), scales, "fp8", group)
