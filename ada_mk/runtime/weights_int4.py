"""4-bit weights in the packed layout: a stage's [N, K] matrix as the ring's chunks of nibble codes
and bf16 (scale, offset) pairs, exactly as docs/quantized-weights.md ("The packed chunk", int4)
specifies, built by numpy on the host or by torch wherever the weights live; and read back.

A segment's sources (Segment.sources, Segment.linear with weights "int4") may be
  * ada_mk.quant.Int4Matrix (numpy) or Int4Tensor (torch), used as stored: their group must be a
    multiple of the stage's (scales and offsets are repeated); a symmetric matrix
    (W = (q - 8) * scale) is streamed as offset = -8 * scale, exact in float32;
  * float tensors (numpy, torch, any float dtype): quantized on load by round to nearest,
    asymmetric, at the stage's group (ada_mk.quant.quantize_int4 / quantize_int4_torch: the same
    codes, scales and offsets bit for bit).

The kernel multiplies W = bf16(q * bf16(scale) + bf16(offset)) (one fused multiply-add of bf16
pairs, rounded once; adamk/dequant.cuh); kernel_weights computes the same values on the host.

    pack_segment(seg, parts)                 -> uint8 bytes of the segment (numpy)
    pack_segment_torch(seg, parts, device)   -> the same bytes as a torch uint8 tensor
    pack_chunks(q, scales, offsets, t)       -> the bytes of codes [N, K] and float32 pairs
    unpack_chunks(flat, t)                   -> (codes, bf16 scales, bf16 offsets) of the bytes
    unpack_int4(packed, seg, base)           -> (codes, scales, offsets) [N, ...] from a buffer
    kernel_weights(q, scales, offsets, group)-> float32 [N, K]: the weights the kernel multiplies
    dequantize_packed_torch(wbuf, seg, base) -> the same, torch, where the buffer lives
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..quant.int4 import SYMMETRIC_ZERO, Int4Matrix
from ..quant.int4_quantize import quantize_int4
from ..quant.int4_torch import Int4Tensor, quantize_int4_torch
from ..search.plan import LinearTiling
from .weights import is_torch as _is_torch, pad_rows as _pad_rows, segment_bytes

ROWS_AT_ONCE = 1 << 24  # elements kernel_weights turns into float64 at once (torch)
BLOCK = 64  # columns of a permuted block: 32 bytes a row, 8 for each lane j of an MMA quad
BLOCK_BYTES = BLOCK // 2


def _permute(x: Any, order: tuple[int, ...]) -> Any:
    return x.permute(*order) if _is_torch(x) else x.transpose(order)


# ---------------------------------------------------------------------------- sources
def int4_source(name: str, src: Any, t: LinearTiling, device: Any = None, on_torch: bool = False) -> Any:
    """Source tensor `name` as an asymmetric int4 matrix at the stage's group: Int4Matrix, or with
    `on_torch` an Int4Tensor on `device` (None: the source's own). ValueError (one line, naming the
    tensor) for a stored group the stage's does not divide."""
    if isinstance(src, (Int4Matrix, Int4Tensor)):
        if on_torch:
            m = Int4Tensor.from_matrix(src, device) if isinstance(src, Int4Matrix) else src.to(
                device if device is not None else src.q.device)
        else:
            m = src.to_matrix() if isinstance(src, Int4Tensor) else src
        if m.group % t.group:
            raise ValueError(f"weight {name!r} is int4 with group {m.group}; the plan streams int4 with group"
                             f" {t.group}, which must divide it (--weights-group {m.group})")
        if m.offsets is None:  # symmetric: (q - 8) * s = q * s + (-8 * s), exact in float32
            m = type(m)(m.q, m.scales, m.scales * -float(SYMMETRIC_ZERO), m.group)
        if m.group == t.group:
            return m
        return _regroup_torch(m, t.group) if on_torch else m.regroup(t.group)
    try:
        if on_torch:
            import torch

            w = src if _is_torch(src) else torch.from_numpy(np.ascontiguousarray(src))
            return quantize_int4_torch(w.detach().to(device if device is not None else w.device), t.group)
        w = src.detach().float().cpu().numpy() if _is_torch(src) else np.asarray(src, np.float32)
        return quantize_int4(w, t.group)
    except ValueError as e:
        raise ValueError(f"weight {name!r}: {e}") from None


def _regroup_torch(m: Int4Tensor, group: int) -> Int4Tensor:
    """An asymmetric Int4Tensor with `group` (a divisor of its group) columns per scale."""
    r = m.group // group
    return Int4Tensor(m.q, m.scales.repeat_interleave(r, 1), m.offsets.repeat_interleave(r, 1), group)


def _segment_matrix(seg: Any, parts: list[tuple[str, Any]], device: Any, on_torch: bool) -> tuple[Any, Any, Any]:
    """The segment's codes [N, K], scales and offsets [N, K // group], its sources' rows
    concatenated (q|k|v) or interleaved (gate/up) as the bf16 path takes them."""
    ms = [int4_source(n, p, seg.linear, device, on_torch) for n, p in parts]
    fields = [[m.q for m in ms], [m.scales for m in ms], [m.offsets for m in ms]]
    if on_torch:
        import torch

        if seg.interleaved:
            return tuple(torch.stack(f, 1).reshape(-1, f[0].shape[1]) for f in fields)
        return tuple(torch.cat(f) for f in fields)
    if seg.interleaved:
        return tuple(np.stack(f, 1).reshape(-1, f[0].shape[1]) for f in fields)
    return tuple(np.concatenate(f) for f in fields)


# ---------------------------------------------------------------------------- chunks
def block_swizzle(t: LinearTiling) -> np.ndarray:
    """Per chunk row r, the XOR that takes a 64-column block (32 bytes) of the row to where it is
    stored: with the batched multiply, the 8 rows a load reads at one column cover the four
    32-byte quarters of the banks (adamk/tasks.cuh, nibble_offset): rows of whole 128-byte lines
    take r % 4, rows of an odd number of 64-byte halves (r / 2) % 2, others 0."""
    r = np.arange(t.chunk_rows)
    line = t.chunk_cols // 2 % 128
    if not t.batched or line not in (0, 64):
        return np.zeros_like(r)
    return r & 3 if line == 0 else (r >> 1) & 1


def _swizzle(codes: Any, t: LinearTiling) -> Any:
    """codes [..., chunk_rows, blocks, 32] with row r's block b moved to b ^ block_swizzle(t)[r]
    (an involution)."""
    m = block_swizzle(t)
    if not m.any():
        return codes
    nb = codes.shape[-2]
    idx = np.arange(nb)[None, :] ^ m[:, None]
    rows = np.arange(t.chunk_rows)[:, None]
    if _is_torch(codes):
        import torch

        idx, rows = torch.from_numpy(idx).to(codes.device), torch.from_numpy(rows).to(codes.device)
    return codes[..., rows, idx, :]


def _bf16_bits(x: Any) -> Any:
    """bf16 bits (round to nearest even) of float32 x as uint32 (numpy) or int32 (torch)."""
    if _is_torch(x):
        import torch

        return x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


def pack_chunks(q: Any, scales: Any, offsets: Any, t: LinearTiling) -> Any:
    """The segment's bytes (uint8, t.tasks * t.chunks * t.chunk_bytes; numpy or torch as q is) of
    codes q [N, K] (0..15) and float32 scales and offsets [N, K // t.group], stored as bf16 pairs."""
    torch_ = _is_torch(q)
    tiles, rows, cr, ks, kp, cc = t.tiles, t.rows, t.chunk_rows, t.ksplit, t.kparts, t.chunk_cols
    n, k = q.shape
    want = (n, k // t.group)
    if (n, k) != (t.n, t.k) or tuple(scales.shape) != want or tuple(offsets.shape) != want:
        raise ValueError(f"pack_chunks: codes {tuple(q.shape)}, scales {tuple(scales.shape)} and offsets"
                         f" {tuple(offsets.shape)} do not fit the int4 tiling of [{t.n}, {t.k}] with group {t.group}")
    if t.weights != "int4" or not t.whole_column_blocks or cc % BLOCK or rows % cr:
        raise ValueError(f"pack_chunks: the tiling {t} is not int4 in whole 64-column blocks")
    npad, nch, spr = tiles * rows, t.tasks * t.chunks, t.scales_per_row
    q = _pad_rows(q, npad)
    # a block's columns [half, lane j, pair i, odd] as nibbles [lane j, half, odd, pair i]: in each
    # 32-bit word (one lane's 8 columns of one half) nibble i holds column 2i, nibble 4 + i column 2i + 1
    codes = q.reshape(tiles, rows // cr, cr, ks, kp, cc // BLOCK, 2, 4, 4, 2)
    codes = _permute(codes, (0, 3, 1, 4, 2, 5, 7, 6, 9, 8))  # [tile, split, group, part, row, block, j, half, odd, i]
    codes = codes.reshape(tiles, ks, rows // cr, kp, cr, cc // BLOCK, BLOCK_BYTES, 2)
    codes = codes[..., 0] | (codes[..., 1] << 4)  # nibble 2b low, 2b + 1 high in byte b
    codes = _swizzle(codes, t).reshape(nch, cr * cc // 2)
    pairs = _bf16_bits(scales) | (_bf16_bits(offsets) << 16)  # scale low, offset high
    pairs = _pad_rows(pairs, npad)  # padded rows: scale 0, offset 0, weights 0
    pairs = _permute(pairs.reshape(tiles, rows // cr, cr, ks, kp, spr), (0, 3, 1, 4, 2, 5)).reshape(nch, cr * spr)
    cb = t.code_bytes
    if torch_:
        import torch

        out = torch.zeros(nch, t.chunk_bytes, dtype=torch.uint8, device=q.device)
        out[:, :cb] = codes
        out[:, cb:cb + 4 * cr * spr] = pairs.to(torch.int32).contiguous().view(torch.uint8)
    else:
        out = np.zeros((nch, t.chunk_bytes), np.uint8)
        out[:, :cb] = codes
        out[:, cb:cb + 4 * cr * spr] = np.ascontiguousarray(pairs, dtype="<u4").view(np.uint8)
    return out.reshape(-1)


def unpack_chunks(flat: Any, t: LinearTiling) -> tuple[Any, Any, Any]:
    """pack_chunks' inverse: (codes [tiles * rows, K] uint8, scales and offsets [tiles * rows, K //
    group] float32, the bf16 values the kernel reads) of a segment's bytes, padding rows included."""
    torch_ = _is_torch(flat)
    tiles, rows, cr, ks, kp, cc = t.tiles, t.rows, t.chunk_rows, t.ksplit, t.kparts, t.chunk_cols
    npad, nch, spr, cb = tiles * rows, t.tasks * t.chunks, t.scales_per_row, t.code_bytes
    a = flat.reshape(nch, t.chunk_bytes)
    codes = _swizzle(a[:, :cb].reshape(tiles, ks, rows // cr, kp, cr, cc // BLOCK, BLOCK_BYTES), t)
    if torch_:
        import torch

        nib = torch.stack([codes & 15, codes >> 4], -1)
        words = a[:, cb:cb + 4 * cr * spr].contiguous().view(torch.int32)
        scales = (words << 16).view(torch.float32)
        offsets = (words & -65536).view(torch.float32)
    else:
        nib = np.stack([codes & 15, codes >> 4], -1)
        words = np.ascontiguousarray(a[:, cb:cb + 4 * cr * spr]).view("<u4").astype(np.uint32)
        scales = (words << 16).view(np.float32)
        offsets = (words & np.uint32(0xFFFF0000)).view(np.float32)
    nib = nib.reshape(tiles, ks, rows // cr, kp, cr, cc // BLOCK, 4, 2, 2, 4)  # [.., j, half, odd, i]
    q = _permute(nib, (0, 2, 4, 1, 3, 5, 7, 6, 9, 8)).reshape(npad, t.k)

    def rows_of(x: Any) -> Any:
        return _permute(x.reshape(tiles, ks, rows // cr, kp, cr, spr), (0, 2, 4, 1, 3, 5)).reshape(npad, ks * kp * spr)

    return q, rows_of(scales), rows_of(offsets)


def _round_bf16(x: Any) -> Any:
    """float64 x rounded once to bf16 (8 significant bits, ties to even), as float32."""
    if _is_torch(x):
        import torch

        m, e = torch.frexp(x)
        return torch.ldexp(torch.round(m * 256), (e - 8).to(torch.float64)).to(torch.float32)
    m, e = np.frexp(x)
    return np.ldexp(np.rint(m * 256), e - 8).astype(np.float32)


def kernel_weights(q: Any, scales: Any, offsets: Any, group: int) -> Any:
    """float32 [N, K]: the weights the kernel multiplies, bf16(q * scale + offset) with one rounding
    (bf16x2 fma), from codes [N, K] and the bf16-valued scales and offsets [N, K // group]."""
    n, k = q.shape
    if _is_torch(q):
        import torch

        out = torch.empty(n, k, dtype=torch.float32, device=q.device)
        step = max(1, ROWS_AT_ONCE // max(k, 1))  # bounds the float64 temporaries (on the GPU: 8B models)
        for r in range(0, n, step):
            qd = q[r:r + step].reshape(-1, k // group, group).to(torch.float64)
            s64, o64 = scales[r:r + step].to(torch.float64), offsets[r:r + step].to(torch.float64)
            exact = qd * s64[:, :, None] + o64[:, :, None]
            out[r:r + step] = _round_bf16(exact).reshape(-1, k)
        return out
    qd = q.reshape(n, k // group, group).astype(np.float64)
    exact = qd * scales.astype(np.float64)[:, :, None] + offsets.astype(np.float64)[:, :, None]
    return _round_bf16(exact).reshape(n, k)  # exact in float64: a 4-bit x 8-bit product plus a bf16


# ---------------------------------------------------------------------------- segments
def pack_segment(seg: Any, parts: list[tuple[str, Any]]) -> np.ndarray:
    """An int4 segment's bytes (uint8 [seg.size * 2]) from its sources (name, tensor), on the host."""
    return pack_chunks(*_segment_matrix(seg, parts, None, on_torch=False), seg.linear)


def pack_segment_torch(seg: Any, parts: list[tuple[str, Any]], device: Any) -> Any:
    """pack_segment by torch on `device`: the same bytes as a torch.uint8 tensor."""
    return pack_chunks(*_segment_matrix(seg, parts, device, on_torch=True), seg.linear)


def unpack_int4(packed: Any, seg: Any, base: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [N, K], scales, offsets [N, K // group]) an int4 segment of a packed buffer holds (rows
    after concatenation or interleaving); base: the layer's base (Region.layer_base + layer *
    layer_stride)."""
    t = seg.linear
    flat = segment_bytes(packed, seg, base)
    if _is_torch(flat):
        flat = flat.cpu().numpy()
    q, s, o = unpack_chunks(flat, t)
    return np.ascontiguousarray(q[:t.n]), np.ascontiguousarray(s[:t.n]), np.ascontiguousarray(o[:t.n])


def dequantize_packed_torch(wbuf: Any, seg: Any, base: int = 0) -> Any:
    """The float32 [N, K] matrix an int4 segment of a packed torch buffer holds, as the kernel
    multiplies it (kernel_weights), computed where the buffer lives."""
    t = seg.linear
    q, s, o = unpack_chunks(segment_bytes(wbuf, seg, base), t)
    return kernel_weights(q[:t.n], s[:t.n], o[:t.n], t.group)


def dequantized_source(name: str, src: Any, t: LinearTiling) -> Any:
    """What the kernel multiplies for source `name` of an int4 stage (packed as pack_segment packs
    it), float32 [rows, K], numpy or torch as the source is."""
    torch_ = _is_torch(src) or isinstance(src, Int4Tensor)
    m = int4_source(name, src, t, None, on_torch=torch_)
    return kernel_weights(m.q, _round_bf16(_f64(m.scales)), _round_bf16(_f64(m.offsets)), t.group)


def _f64(x: Any) -> Any:
    if _is_torch(x):
        import torch

        return x.to(torch.float64)
    return x.astype(np.float64)
