"""Pack a model's weights into the plan's device layout: one bf16 buffer, HF tensors concatenated
along rows where the plan fuses them (q|k|v) or interleaved row by row (gate/up), every segment
at its planned offset, the batched multiply's matrices tiled on Hopper (Segment.tiling), and
quantized stages as chunks of codes and scales (Segment.linear; ada_mk.runtime.weights_q8 for
8-bit, weights_int4 for 4-bit)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..search.layout import Layout, Segment


def is_torch(x: Any) -> bool:
    """Whether x is a torch tensor (torch itself is not imported here)."""
    return hasattr(x, "detach")


def pad_rows(x: Any, rows: int) -> Any:
    """x [N, ...] (numpy or torch) with zero rows appended up to `rows`."""
    n = x.shape[0]
    if n == rows:
        return x
    if is_torch(x):
        import torch

        return torch.cat([x, x.new_zeros(rows - n, *x.shape[1:])])
    return np.concatenate([x, np.zeros((rows - n, *x.shape[1:]), x.dtype)])


def segment_bytes(packed: Any, seg: Any, base: int) -> Any:
    """The bytes of segment `seg` at layer base `base` (in bf16 elements) of a packed buffer
    (numpy uint16/uint8, or a torch bf16/uint8 tensor): a view, uint8."""
    if is_torch(packed):
        import torch

        buf = packed.reshape(-1).view(torch.uint8)
    else:
        buf = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    start = 2 * (base + seg.offset)
    return buf[start:start + 2 * seg.size]


def swap_odd_halves(t: Any, half: int) -> Any:
    """[..., row (even count), column] (numpy or torch), `half` elements per 64 bytes: where rows
    are whole 128-byte lines, odd rows with the two 64-byte halves of each line swapped (the
    batched multiply's bank swizzle, adamk/tasks.cuh; an involution); otherwise t as it is."""
    cc = t.shape[-1]
    if cc % (2 * half):
        return t
    lines = t.reshape(*t.shape[:-1], cc // (2 * half), 2, half)
    if is_torch(t):
        import torch
        return torch.stack([lines[..., 0::2, :, :, :], lines[..., 1::2, :, :, :].flip(-2)], dim=-4).reshape(t.shape)
    return np.stack([lines[..., 0::2, :, :, :], lines[..., 1::2, :, ::-1, :]], axis=-4).reshape(t.shape)


def _as_torch(x: Any) -> Any:
    """A torch tensor of x (numpy arrays are wrapped, not copied)."""
    if is_torch(x):
        return x
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def to_bf16_bits(x: Any) -> np.ndarray:
    """bf16 bit patterns (uint16) of an array, rounding to nearest even like torch does.
    torch tensors are converted by torch itself (exact); everything else through float32."""
    if is_torch(x):
        import torch

        return x.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(f)
    return np.where(nan, 0x7FC0, rounded).astype(np.uint16)


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def tile_matrix(mat: Any, tiling: tuple[int, ...]) -> Any:
    """A [N, K] matrix (numpy array or torch tensor) in the tiled order of Segment.tiling, flat:
    per task (tile, K-split), per 16-row group, per column block, 16 rows x chunk_cols, odd rows
    with the 64-byte halves of each 128-byte line swapped where rows are whole lines (chunk_cols a
    multiple of 64, as adamk/tasks.cuh tile_offset reads them); rows past N up to whole tiles zero."""
    rows, ksplit, kparts, cc = tiling
    n, k = mat.shape
    tiles = -(-n // rows)
    mat = pad_rows(mat, tiles * rows)  # zero rows up to whole tiles
    t = mat.reshape(tiles, rows // 16, 16, ksplit, kparts, cc)  # [tile, group, row, split, part, column]
    order = (0, 3, 1, 4, 2, 5)  # -> [tile, split, group, part, row, column]
    t = t.permute(*order) if is_torch(mat) else t.transpose(order)
    return swap_odd_halves(t, 32).reshape(-1)


def untile_matrix(flat: Any, shape: tuple[int, ...], tiling: tuple[int, ...]) -> Any:
    """The [N, K] matrix back from tile_matrix's order (numpy array or torch tensor)."""
    rows, ksplit, kparts, cc = tiling
    n, k = shape
    tiles = -(-n // rows)
    t = swap_odd_halves(flat.reshape(tiles, ksplit, rows // 16, kparts, 16, cc), 32)
    order = (0, 2, 4, 1, 3, 5)  # -> [tile, group, row, split, part, column]
    t = t.permute(*order) if is_torch(flat) else t.transpose(order)
    return t.reshape(tiles * rows, k)[:n]


def _segment_rows(seg: Segment, layer: int, weights: Mapping[str, Any]) -> list[tuple[str, Any]]:
    names = [s.format(i=layer) for s in seg.sources]
    out = []
    for n in names:
        if n not in weights:
            raise KeyError(f"weight {n!r} is missing (needed for {seg.name})")
        out.append((n, weights[n]))
    return out


def as_floats(x: Any) -> Any:
    """A quantized source (QuantizedMatrix, QuantizedTensor, Int4Matrix, Int4Tensor) that feeds a
    bf16 segment, as floats."""
    from ..quant import Int4Matrix, QuantizedMatrix, QuantizedTensor
    from ..quant.int4_torch import Int4Tensor

    return x.dequantize() if isinstance(x, (QuantizedMatrix, QuantizedTensor, Int4Matrix, Int4Tensor)) else x


def _check_shapes(seg: Segment, parts: list[tuple[str, Any]]) -> None:
    rows = sum(int(p.shape[0]) for _, p in parts)
    tail = tuple(seg.shape[1:])
    for n, p in parts:
        if tuple(p.shape[1:]) != tail:
            raise ValueError(f"weight {n!r} has shape {tuple(p.shape)}; expected (*, {', '.join(map(str, tail))})"
                             if tail else f"weight {n!r} has shape {tuple(p.shape)}; expected a vector")
    if rows != seg.shape[0]:
        raise ValueError(f"weights {[n for n, _ in parts]} give {rows} rows for {seg.name}; expected {seg.shape[0]}")


def dequantize_segment_torch(wbuf: Any, seg: Segment, base: int = 0) -> Any:
    """The float32 [N, K] matrix a quantized segment of a packed torch buffer holds, as the kernel
    multiplies it (8-bit: weights_q8; int4: weights_int4), computed where the buffer lives."""
    from . import weights_int4, weights_q8

    return (weights_int4 if seg.weights == "int4" else weights_q8).dequantize_packed_torch(wbuf, seg, base)


def pack_weights(layout: Layout, weights: Mapping[str, Any]) -> np.ndarray:
    """The packed buffer as uint16 (bf16 bits; an 8-bit segment's bytes read as little-endian
    pairs) on the host. Padding between segments is zero."""
    w = layout.weights
    out = np.zeros(w.total, np.uint16)
    done: set[int] = set()

    def put(seg: Segment, base: int, layer: int) -> None:
        if base + seg.offset in done:  # a tied LM head shares the embedding's segment
            return
        done.add(base + seg.offset)
        parts = _segment_rows(seg, layer, weights)
        _check_shapes(seg, parts)
        if seg.linear is not None:
            from . import weights_int4, weights_q8

            pack = (weights_int4 if seg.weights == "int4" else weights_q8).pack_segment
            out[base + seg.offset: base + seg.offset + seg.size] = pack(seg, parts).view(np.uint16)
            return
        bits = [to_bf16_bits(as_floats(p)) for _, p in parts]
        flat = np.stack(bits, axis=1) if seg.interleaved else np.concatenate([b.reshape(-1) for b in bits])
        if seg.tiling:
            flat = tile_matrix(flat.reshape(seg.shape), seg.tiling)
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
    PCIe twice). Returns a 1-D torch.bfloat16 tensor (8-bit segments: their bytes)."""
    import torch

    from . import weights_int4, weights_q8

    w = layout.weights
    first = next(iter(weights.values()))
    device = device if device is not None else getattr(first, "device", None)
    out = torch.zeros(w.total, dtype=torch.bfloat16, device=device)
    out_bytes = out.view(torch.uint8)
    segs = [(0, 0, s) for s in w.globals_.values()]
    segs += [(w.layer_base + l * w.layer_stride, l, s) for l in range(w.layers) for s in w.per_layer.values()]
    for base, layer, seg in segs:
        parts = _segment_rows(seg, layer, weights)
        _check_shapes(seg, parts)
        if seg.linear is not None:
            start = 2 * (base + seg.offset)
            pack = (weights_int4 if seg.weights == "int4" else weights_q8).pack_segment_torch
            out_bytes[start: start + 2 * seg.size] = pack(seg, parts, out.device)
            continue
        ts = [_as_torch(as_floats(p)).detach().to(device=device, dtype=torch.bfloat16) for _, p in parts]
        flat = torch.stack(ts, dim=1) if seg.interleaved else torch.cat([t.reshape(-1) for t in ts])
        if seg.tiling:
            flat = tile_matrix(flat.reshape(seg.shape), seg.tiling)
        out[base + seg.offset: base + seg.offset + seg.size] = flat.reshape(-1)
    return out
