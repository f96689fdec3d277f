"""Pack a model's weights into the plan's device layout: one bf16 buffer, HF tensors concatenated
along rows where the plan fuses them (q|k|v) or interleaved row by row (gate/up), every segment
at its planned offset."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..search.layout import Layout, Segment


def to_bf16_bits(x: Any) -> np.ndarray:
    """bf16 bit patterns (uint16) of an array, rounding to nearest even like torch does.
    torch tensors are converted by torch itself (exact); everything else through float32."""
    if hasattr(x, "detach"):
        import torch

        return x.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(f)
    return np.where(nan, 0x7FC0, rounded).astype(np.uint16)


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _segment_rows(seg: Segment, layer: int, weights: Mapping[str, Any]) -> list[tuple[str, Any]]:
    names = [s.format(i=layer) for s in seg.sources]
    out = []
    for n in names:
        if n not in weights:
            raise KeyError(f"weight {n!r} is missing (needed for {seg.name})")
        out.append((n, weights[n]))
    return out


def _check_shapes(seg: Segment, parts: list[tuple[str, Any]]) -> None:
    rows = sum(int(p.shape[0]) for _, p in parts)
    tail = tuple(seg.shape[1:])
    for n, p in parts:
        if tuple(p.shape[1:]) != tail:
            raise ValueError(f"weight {n!r} has shape {tuple(p.shape)}; expected (*, {', '.join(map(str, tail))})"
                             if tail else f"weight {n!r} has shape {tuple(p.shape)}; expected a vector")
    if rows != seg.shape[0]:
        raise ValueError(f"weights {[n for n, _ in parts]} give {rows} rows for {seg.name}; expected {seg.shape[0]}")


def pack_weights(layout: Layout, weights: Mapping[str, Any]) -> np.ndarray:
    """The packed buffer as uint16 (bf16 bits) on the host. Padding between segments is zero."""
    w = layout.weights
    out = np.zeros(w.total, np.uint16)
    done: set[int] = set()

    def put(seg: Segment, base: int, layer: int) -> None:
        if base + seg.offset in done:  # a tied LM head shares the embedding's segment
            return
        done.add(base + seg.offset)
        parts = _segment_rows(seg, layer, weights)
        _check_shapes(seg, parts)
        bits = [to_bf16_bits(p) for _, p in parts]
        flat = np.stack(bits, axis=1) if seg.interleaved else np.concatenate([b.reshape(-1) for b in bits])
        out[base + seg.offset: base + seg.offset + seg.size] = flat.reshape(-1)

    for seg in w.globals_.values():
        put(seg, 0, 0)
    for layer in range(w.layers):
        base = w.layer_base + layer * w.layer_stride
        for seg in w.per_layer.values():
            put(seg, base, layer)
    return out


def pack_weights_torch(layout: Layout, weights: Mapping[str, Any], device: Any = None):
    """The same buffer built by torch (on `device`, e.g. the GPU, so 16 GB of weights never cross
    PCIe twice). Returns a 1-D torch.bfloat16 tensor."""
    import torch

    w = layout.weights
    first = next(iter(weights.values()))
    device = device if device is not None else first.device
    out = torch.zeros(w.total, dtype=torch.bfloat16, device=device)
    segs = [(0, 0, s) for s in w.globals_.values()]
    segs += [(w.layer_base + l * w.layer_stride, l, s) for l in range(w.layers) for s in w.per_layer.values()]
    for base, layer, seg in segs:
        parts = _segment_rows(seg, layer, weights)
        _check_shapes(seg, parts)
        ts = [p.detach().to(device=device, dtype=torch.bfloat16) for _, p in parts]
        flat = torch.stack(ts, dim=1) if seg.interleaved else torch.cat([t.reshape(-1) for t in ts])
        out[base + seg.offset: base + seg.offset + seg.size] = flat.reshape(-1)
    return out
