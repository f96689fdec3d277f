"""NaN and Inf in the weights, found on request before they turn every logit into NaN.

Two places to look: the HF-named tensors before packing (`check_tensors`, naming the tensor and the
index), and a packed buffer in the plan's layout (`check_packed`, naming the layout's segment, the
layer and its HF tensors). The C ABI's adamk_check_weights scans the packed buffer on the GPU with
the same segment table (`weight_segments`, rendered into <stem>_host.cu) and the same rules:

- bf16 segments (norms, the embedding, bf16 matrices, tiled or not): every 2-byte element;
- 8-bit and int4 segments, chunk by chunk (docs/quantized-weights.md, "The packed chunk"): fp8
  codes (E4M3's NaN is S.1111.111; it has no Inf), the float32 scales of 8-bit chunks, the bf16
  scale and offset pairs of int4 chunks; int8 and int4 codes are integers, padding is not read.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..search.layout import Layout


@dataclass(frozen=True)
class WeightSegment:
    """One segment of the packed weights as the checks walk it. `offset` and `bytes` in bytes
    (layer 0's for a per-layer segment, the next layer `layer_stride` bytes on); chunk_bytes 0:
    bf16 elements throughout, else chunks of code_bytes of codes, then scale_bytes of scales."""

    name: str
    tensors: str  # its HF tensors, "{i}" standing for the layer
    offset: int
    bytes: int
    per_layer: bool
    chunk_bytes: int = 0
    code_bytes: int = 0
    scale_bytes: int = 0
    fp8_codes: bool = False
    bf16_scales: bool = False  # int4's (scale, offset) bf16 pairs; else float32 scales


def weight_segments(layout: Layout) -> list[WeightSegment]:
    """The packed weights' segments in buffer order (a tied LM head, which is the embedding, once)."""
    w = layout.weights
    out, seen = [], set()
    for per_layer, segs in ((False, w.globals_), (True, w.per_layer)):
        for name, seg in segs.items():
            offset = (w.layer_base + seg.offset if per_layer else seg.offset) * w.unit
            if (per_layer, offset) in seen:
                continue
            seen.add((per_layer, offset))
            t = seg.linear
            extra = {} if t is None else dict(
                chunk_bytes=t.chunk_bytes, code_bytes=t.code_bytes, scale_bytes=4 * t.chunk_rows * t.scales_per_row,
                fp8_codes=t.weights == "fp8", bf16_scales=t.weights == "int4")
            out.append(WeightSegment(name, ", ".join(seg.sources), offset, seg.size * w.unit, per_layer, **extra))
    return sorted(out, key=lambda s: s.offset)


def describe(seg: WeightSegment, layer: int) -> str:
    """"segment wqkv of layer 3 (model.layers.3.self_attn.q_proj.weight, ...)"."""
    where = f"segment {seg.name}" + (f" of layer {layer}" if seg.per_layer else "")
    return f"{where} ({seg.tensors.replace('{i}', str(layer))})"


def _bad_bf16(h: np.ndarray) -> np.ndarray:
    return (h & 0x7F80) == 0x7F80


def _first_bad(seg: WeightSegment, raw: np.ndarray) -> tuple[int, str] | None:
    """(byte offset in the segment, what) of the first NaN / Inf in one copy of `seg` (raw uint8)."""
    if not seg.chunk_bytes:
        bad = np.flatnonzero(_bad_bf16(raw[: raw.size // 2 * 2].view("<u2")))
        return (2 * int(bad[0]), "bf16 weight") if bad.size else None
    chunks = raw.reshape(-1, seg.chunk_bytes)
    found = []
    if seg.fp8_codes:
        codes = chunks[:, :seg.code_bytes]
        bad = np.flatnonzero((codes & 0x7F) == 0x7F)
        if bad.size:
            c, i = divmod(int(bad[0]), seg.code_bytes)
            found.append((c * seg.chunk_bytes + i, "fp8 code"))
    scales = np.ascontiguousarray(chunks[:, seg.code_bytes:seg.code_bytes + seg.scale_bytes])
    if seg.bf16_scales:
        bad, size, what = np.flatnonzero(_bad_bf16(scales.view("<u2"))), 2, "bf16 scale or offset"
    else:
        bad, size, what = np.flatnonzero((scales.view("<u4") & 0x7F800000) == 0x7F800000), 4, "float32 scale"
    if bad.size:
        c, i = divmod(int(bad[0]) * size, seg.scale_bytes)
        found.append((c * seg.chunk_bytes + seg.code_bytes + i, what))
    return min(found) if found else None


def check_packed(layout: Layout, packed: np.ndarray) -> None:
    """ValueError naming the segment, layer, HF tensors and byte of the first NaN or Inf in the
    packed weights (any dtype; read as bytes), in buffer order."""
    raw = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    w = layout.weights
    if raw.size != w.total_bytes:
        raise ValueError(f"packed weights are {raw.size} bytes; the layout needs {w.total_bytes}")
    hits = []
    for seg in weight_segments(layout):
        for layer in range(w.layers if seg.per_layer else 1):
            start = seg.offset + layer * w.layer_stride * w.unit
            hit = _first_bad(seg, raw[start:start + seg.bytes])
            if hit is not None:
                hits.append((start + hit[0], seg, layer, hit))
                break  # later layers of this segment lie further on
    if hits:
        at, seg, layer, (off, what) = min(hits, key=lambda h: h[0])
        raise ValueError(f"weights: a NaN or Inf ({what}) in {describe(seg, layer)}, at byte {off} of the "
                         f"segment's {seg.bytes} (byte {at} of the packed buffer)")


def check_tensors(weights: Mapping[str, Any]) -> None:
    """ValueError naming the first HF tensor (in the mapping's order) holding a NaN or Inf, and
    the index of its first one. NumPy arrays or torch tensors (checked where they live)."""
    for name, t in weights.items():
        if hasattr(t, "isfinite") and hasattr(t, "is_cuda"):  # torch
            import torch

            ok = torch.isfinite(t) if t.is_floating_point() else None
            if ok is not None and not bool(ok.all()):
                idx = tuple(int(i) for i in torch.nonzero(~ok)[0].tolist())
                raise ValueError(f"weights: tensor {name!r} holds {float(t[idx])} at index {idx} "
                                 f"({int((~ok).sum())} non-finite values)")
            continue
        a = np.asarray(t)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"weights: tensor {name!r} holds {a[idx]} at index {idx} ({int(bad.sum())} non-finite values)")
