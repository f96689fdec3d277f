"""8-bit weights in the packed layout: a stage's [N, K] matrix as the ring's chunks of codes and
scales, exactly as docs/quantized-weights.md ("The packed chunk") specifies, built by numpy on
the host or by torch wherever the weights live (the GPU for 8B models: whole-matrix tensor
operations, no loop over rows or chunks); and read back.

A segment's sources (Segment.sources, Segment.linear) may be
  * float tensors (numpy, torch, any float dtype): quantized on load with the stage's format and
    group, by the same rounding as ada_mk.quant.quantize_fp8 / quantize_int8 (their torch twins
    on torch tensors: the same codes and scales bit for bit);
  * already 8-bit: ada_mk.quant.QuantizedMatrix (numpy) or QuantizedTensor (torch) of the stage's
    format, whose group is a multiple of the stage's (their scales are repeated), or any group
    when the stage has one scale per row and every scale of a row is the same.

    pack_segment(seg, parts)                     -> uint8 bytes of the segment (numpy)
    pack_segment_torch(seg, parts, device)       -> the same bytes as a torch uint8 tensor
    unpack_quantized(packed, seg, base)          -> QuantizedMatrix [N, K] read back from a buffer
    dequantize_packed_torch(wbuf, seg, base)     -> float32 [N, K] the kernel multiplies (torch)
    dequantized_weights(layout, weights)         -> HF name -> float weights the kernel multiplies
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..quant.matrix import QuantizedMatrix
from ..quant.quantize import quantize_fp8, quantize_int8
from ..quant.torch_quant import QuantizedTensor, quantize_fp8_torch, quantize_int8_torch
from ..search.plan import LinearTiling
from .weights import is_torch as _is_torch, pad_rows as _pad_rows, segment_bytes, swap_odd_halves

# Columns of a permuted block: the 4 lanes of an MMA's k, 16 bytes each. Byte 16 j + i of a block
# (j = 0..3, the lane within an MMA quad) holds column 8 j + i for i < 8 and 32 + 8 j + (i - 8)
# for i >= 8: the block's columns [half, j, 8] stored as bytes [j, half, 8].
BLOCK = 64


def group_columns(t: LinearTiling) -> int:
    """Columns per scale of an 8-bit stage (its group; K for one scale per row)."""
    return t.group or t.k


def swizzled(t: LinearTiling) -> bool:
    """Whether odd rows of a chunk have the 64-byte halves of each 128-byte line swapped."""
    return t.batched and t.chunk_cols % 128 == 0


# ---------------------------------------------------------------------------- sources
def quantize_source(name: str, src: Any, t: LinearTiling, device: Any = None, on_torch: bool = False) -> Any:
    """Source tensor `name` as the stage's 8-bit matrix at its group (group_columns): a
    QuantizedMatrix, or with `on_torch` a QuantizedTensor on `device` (None: the source's own).
    ValueError (one line, naming the tensor) for another format or a group that does not fit."""
    gc = group_columns(t)
    if isinstance(src, (QuantizedMatrix, QuantizedTensor)):
        if src.fmt != t.weights:
            raise ValueError(f"weight {name!r} is {src.fmt}; the plan streams it as {t.weights}")
        if on_torch:
            m = QuantizedTensor.from_matrix(src, device) if isinstance(src, QuantizedMatrix) else src.to(
                device if device is not None else src.device)
        else:
            m = src.to_matrix() if isinstance(src, QuantizedTensor) else src
        return _regroup(name, m, t)
    try:
        if on_torch:
            import torch

            w = src if _is_torch(src) else torch.from_numpy(np.ascontiguousarray(src))
            w = w.detach().to(device if device is not None else w.device)
            quantize = quantize_fp8_torch if t.weights == "fp8" else quantize_int8_torch
        else:
            w = src.detach().float().cpu().numpy() if _is_torch(src) else np.asarray(src, np.float32)
            quantize = quantize_fp8 if t.weights == "fp8" else quantize_int8
        m = quantize(w, t.group or None)
    except ValueError as e:
        raise ValueError(f"weight {name!r}: {e}") from None
    assert m.group == gc
    return m


def _regroup(name: str, m: Any, t: LinearTiling) -> Any:
    gc = group_columns(t)
    if m.group == gc:
        return m
    if m.group % gc == 0:
        return m.regroup(gc)
    if gc == t.k and bool((m.scales == m.scales[:, :1]).all()):  # per row in all but name
        return type(m)(m.q, m.scales[:, :1].copy() if not _is_torch(m.scales) else m.scales[:, :1].contiguous(),
                       m.fmt, gc)
    if not t.group:
        raise ValueError(f"weight {name!r} is {m.fmt} with group {m.group} and scales that differ along a row; "
                         f"the plan streams {t.weights} with one scale per row")
    raise ValueError(f"weight {name!r} is {m.fmt} with group {m.group}; the plan streams {t.weights} with group "
                     f"{t.group}, which must divide it")


def _segment_matrix(seg: Any, parts: list[tuple[str, Any]], device: Any, on_torch: bool) -> tuple[Any, Any]:
    """The segment's codes [N, K] and scales [N, K // group] (at the stage's group), its sources'
    rows concatenated (q|k|v) or interleaved (gate/up) as the bf16 path takes them."""
    ms = [quantize_source(n, p, seg.linear, device, on_torch) for n, p in parts]
    qs, ss = [m.q for m in ms], [m.scales for m in ms]
    if on_torch:
        import torch

        if seg.interleaved:
            return torch.stack(qs, 1).reshape(-1, qs[0].shape[1]), torch.stack(ss, 1).reshape(-1, ss[0].shape[1])
        return torch.cat(qs), torch.cat(ss)
    if seg.interleaved:
        return np.stack(qs, 1).reshape(-1, qs[0].shape[1]), np.stack(ss, 1).reshape(-1, ss[0].shape[1])
    return np.concatenate(qs), np.concatenate(ss)


# ---------------------------------------------------------------------------- chunks
def _permute(x: Any, order: tuple[int, ...]) -> Any:
    return x.permute(*order) if _is_torch(x) else x.transpose(order)


def _swap_odd_halves(c: Any) -> Any:
    """[..., row (chunk_rows, even), 64-byte block, 64]: odd rows with blocks 2m and 2m + 1 (the
    two halves of a 128-byte line) swapped (weights.swap_odd_halves on 8-bit codes)."""
    return swap_odd_halves(c.reshape(*c.shape[:-2], -1), BLOCK).reshape(c.shape)


def pack_chunks(q: Any, scales: Any, t: LinearTiling) -> Any:
    """The segment's bytes (uint8, t.tasks * t.chunks * t.chunk_bytes; numpy or torch as q is) of
    codes q [N, K] (E4M3 bits, or int8 two's complement) and scales [N, K // group_columns(t)]."""
    torch_ = _is_torch(q)
    tiles, rows, cr, ks, kp, cc = t.tiles, t.rows, t.chunk_rows, t.ksplit, t.kparts, t.chunk_cols
    n, k = q.shape
    if (n, k) != (t.n, t.k) or tuple(scales.shape) != (n, k // group_columns(t)):
        raise ValueError(f"pack_chunks: codes {tuple(q.shape)} and scales {tuple(scales.shape)} do not fit the "
                         f"tiling of [{t.n}, {t.k}] with group {t.group}")
    if not t.whole_column_blocks or cc % BLOCK or rows % cr:
        raise ValueError(f"pack_chunks: the tiling {t} does not cut its chunks into whole 64-column blocks")
    npad, nch, spr = tiles * rows, t.tasks * t.chunks, t.scales_per_row
    q, scales = _pad_rows(q, npad), _pad_rows(scales, npad)  # zero values, zero scales
    if t.weights == "int8":
        q = q ^ 0x80  # value + 128
    # a block's columns [half, lane j, 8] as its bytes [lane j, half, 8] (BLOCK)
    codes = q.reshape(tiles, rows // cr, cr, ks, kp, cc // BLOCK, 2, 4, 8)
    codes = _permute(codes, (0, 3, 1, 4, 2, 5, 7, 6, 8))  # -> [tile, split, row group, part, row, block, j, half, 8]
    codes = codes.reshape(tiles, ks, rows // cr, kp, cr, cc // BLOCK, BLOCK)
    if swizzled(t):
        codes = _swap_odd_halves(codes)
    codes = codes.reshape(nch, cr * cc)
    if not t.group:  # every chunk of a row repeats its scale
        scales = scales[:, :1].expand(npad, ks * kp) if torch_ else np.broadcast_to(scales[:, :1], (npad, ks * kp))
    sc = _permute(scales.reshape(tiles, rows // cr, cr, ks, kp, spr), (0, 3, 1, 4, 2, 5)).reshape(nch, cr * spr)
    nb = cr * cc + 4 * cr * spr
    if torch_:
        import torch

        out = torch.zeros(nch, t.chunk_bytes, dtype=torch.uint8, device=q.device)
        out[:, :cr * cc] = codes
        out[:, cr * cc:nb] = sc.to(torch.float32).contiguous().view(torch.uint8)
    else:
        out = np.zeros((nch, t.chunk_bytes), np.uint8)
        out[:, :cr * cc] = codes
        out[:, cr * cc:nb] = np.ascontiguousarray(sc, dtype="<f4").view(np.uint8)
    return out.reshape(-1)


def unpack_chunks(flat: Any, t: LinearTiling) -> tuple[Any, Any]:
    """pack_chunks' inverse: (codes [tiles * rows, K] uint8, scales [tiles * rows, ksplit * kparts
    * scales_per_row] float32) of a segment's bytes (numpy or torch), padding rows included; with
    one scale per row the scales have one column per chunk of the row."""
    torch_ = _is_torch(flat)
    tiles, rows, cr, ks, kp, cc = t.tiles, t.rows, t.chunk_rows, t.ksplit, t.kparts, t.chunk_cols
    npad, nch, spr = tiles * rows, t.tasks * t.chunks, t.scales_per_row
    a = flat.reshape(nch, t.chunk_bytes)
    codes = a[:, :cr * cc].reshape(tiles, ks, rows // cr, kp, cr, cc // BLOCK, BLOCK)
    if swizzled(t):
        codes = _swap_odd_halves(codes)
    if torch_:
        import torch

        sb = a[:, cr * cc:cr * cc + 4 * cr * spr].contiguous().view(torch.float32)
    else:
        sb = np.ascontiguousarray(a[:, cr * cc:cr * cc + 4 * cr * spr]).view("<f4").astype(np.float32)
    codes = codes.reshape(tiles, ks, rows // cr, kp, cr, cc // BLOCK, 4, 2, 8)  # bytes [j, half, 8] -> columns
    codes = _permute(codes, (0, 2, 4, 1, 3, 5, 7, 6, 8)).reshape(npad, t.k)
    if t.weights == "int8":
        codes = codes ^ 0x80
    sc = _permute(sb.reshape(tiles, ks, rows // cr, kp, cr, spr), (0, 2, 4, 1, 3, 5)).reshape(npad, ks * kp * spr)
    return codes, sc


# ---------------------------------------------------------------------------- segments
def pack_segment(seg: Any, parts: list[tuple[str, Any]]) -> np.ndarray:
    """An 8-bit segment's bytes (uint8 [seg.size * 2]) from its sources (name, tensor), on the host."""
    q, s = _segment_matrix(seg, parts, None, on_torch=False)
    return pack_chunks(q, s, seg.linear)


def pack_segment_torch(seg: Any, parts: list[tuple[str, Any]], device: Any) -> Any:
    """pack_segment by torch on `device`: the same bytes as a torch.uint8 tensor."""
    q, s = _segment_matrix(seg, parts, device, on_torch=True)
    return pack_chunks(q, s, seg.linear)


def unpack_quantized(packed: Any, seg: Any, base: int = 0) -> QuantizedMatrix:
    """The QuantizedMatrix [N, K] (rows after concatenation or interleaving) that an 8-bit segment
    of a packed buffer holds; base: the layer's base (Region.layer_base + layer * layer_stride)."""
    t = seg.linear
    flat = segment_bytes(packed, seg, base)
    if _is_torch(flat):
        flat = flat.cpu().numpy()
    codes, sc = unpack_chunks(flat, t)
    codes, sc = codes[:t.n], sc[:t.n]
    if not t.group:
        if not (sc == sc[:, :1]).all():
            raise ValueError(f"{seg.name}: the chunks of a row disagree on its scale")
        sc = sc[:, :1]
    return QuantizedMatrix(np.ascontiguousarray(codes), np.ascontiguousarray(sc), t.weights, group_columns(t))


def dequantize_packed_torch(wbuf: Any, seg: Any, base: int = 0) -> Any:
    """The float32 [N, K] matrix an 8-bit segment of a packed torch buffer holds (value x scale),
    computed where the buffer lives (for the torch prefill over the kernel's own weights)."""
    t = seg.linear
    codes, sc = unpack_chunks(segment_bytes(wbuf, seg, base), t)
    m = QuantizedTensor(codes[:t.n].contiguous(), sc[:t.n, :1 if not t.group else None].contiguous(), t.weights,
                        group_columns(t))
    return m.dequantize()


def dequantized_weights(layout: Any, weights: Mapping[str, Any]) -> dict[str, Any]:
    """The weights the kernel effectively multiplies, by HF name: every source of the layout's
    quantized segments quantized as packing quantizes it (or taken as the 8-bit or 4-bit matrix it
    is) and dequantized to float32 (numpy, or torch on the source's device; int4:
    weights_int4.dequantized_source, the kernel's bf16 weights); a tied model's quantized LM head
    appears as "lm_head.weight" (the embedding itself stays as given, as floats where a stored matrix
    is given for it); other tensors unchanged."""
    from .weights import as_floats

    out = {k: as_floats(weights[k]) for k in weights}  # a stored matrix feeding a bf16 segment: its floats
    w = layout.weights
    segs = [(s, 0) for s in w.globals_.values()] + [(s, i) for i in range(w.layers) for s in w.per_layer.values()]
    for seg, layer in segs:
        if seg.linear is None:
            continue
        for src in seg.sources:
            name = src.format(i=layer)
            if name not in weights:
                raise KeyError(f"weight {name!r} is missing (needed for {seg.name})")
            x = weights[name]
            key = "lm_head.weight" if seg.name == "lm_head" else name
            if seg.weights == "int4":
                from .weights_int4 import dequantized_source

                out[key] = dequantized_source(name, x, seg.linear)
                continue
            m = quantize_source(name, x, seg.linear, None, on_torch=_is_torch(x) or isinstance(x, QuantizedTensor))
            out[key] = m.dequantize()
    return out
