"""A NumPy model of adamk/linear_multiply_4bit.cuh at the level of lanes and registers: each lane
loads the 8-byte code vector the CUDA code loads (its address arithmetic, nibble_offset's swizzle)
and the (scale, offset) words of its halves' groups, decodes them as decode4 does, bit by bit (the
mask of the word shifted by 4i OR-ed into bf16 128.0, the bf16x2 subtraction of 128, the bf16x2
fma rounded once; the pair's halves splat as __byte_perm does), loads the activations the CUDA code
loads, and the warp's MMAs run on PTX's m16n8k16 fragments (tests/q8_warp_model.py: RowDot /
TileDot's register order and total()'s diagonal). It checks the kernel's index arithmetic, nibble
order and decode without a GPU."""
from __future__ import annotations

import numpy as np

from tests.q8_warp_model import LANES, row_dot_add, row_dot_total, tile_dot_add


def bf16_value(bits: int) -> float:
    """The float a bf16 bit pattern holds."""
    return float(np.array([bits << 16], np.uint32).view(np.float32)[0])


def round_bf16(x: float) -> float:
    """x (exact in float64) rounded once to bf16, ties to even: what a bf16x2 fma writes."""
    if x == 0:
        return 0.0
    m, e = np.frexp(x)
    return float(np.ldexp(np.rint(m * 256), e - 8))


def decode_word(word: int, pair: int) -> np.ndarray:
    """int4x8_to_bf16(word, splat(pair)): the lane's 8 bf16 weights, in a bf16 vector's order."""
    scale, offset = bf16_value(pair & 0xFFFF), bf16_value(pair >> 16)  # __byte_perm 0x1010, 0x3232
    out = np.zeros(8)
    for i in range(4):
        biased = ((word >> (4 * i)) & 0x000F000F) | 0x43004300
        for h in range(2):  # low half: element 2i, high half: element 2i + 1
            q = bf16_value((biased >> (16 * h)) & 0xFFFF) - 128.0  # __hsub2: exact
            out[2 * i + h] = round_bf16(q * scale + offset)  # __hfma2: one rounding
    return out


def decode4(code8: np.ndarray, pair_a: int, pair_b: int) -> tuple[np.ndarray, np.ndarray]:
    """decode4 of a lane's 8 code bytes (uint2: .x the first half's word, .y the second's)."""
    x = int(np.frombuffer(code8[:4].tobytes(), "<u4")[0])
    y = int(np.frombuffer(code8[4:8].tobytes(), "<u4")[0])
    return decode_word(x, pair_a), decode_word(y, pair_b)


def nibble_offset(row: int, byte: int, chunk_cols: int, batched: bool) -> int:
    row_bytes = chunk_cols // 2
    line = row_bytes % 128
    swz = 0 if not batched else (row & 3) if line == 0 else ((row >> 1) & 1) if line == 64 else 0
    return row * row_bytes + (byte ^ (swz << 5))


def multiply_rows_4bit(codes: np.ndarray, pairs: np.ndarray, x: np.ndarray, group: int, wpr: int) -> np.ndarray:
    """multiply_rows_4bit for one chunk of whole rows: codes [rows * kc / 2] (bytes as in the slot),
    pairs [rows][per row] (uint32 words), x [B][kc]. Returns [rows][B], the warps' parts summed."""
    B, kc = x.shape
    rows = codes.size * 2 // kc
    vec = kc // 16
    out = np.zeros((rows, B))
    for crow in range(rows):
        w = nibble_offset(crow, 0, kc, False)
        for part in range(wpr):
            accs = [np.zeros((LANES, 2, 4)) for _ in range((B + 1) // 2)]
            for v0 in range(part * 32, vec, 32 * wpr):
                w_a, w_b = np.zeros((LANES, 8)), np.zeros((LANES, 8))
                xs = [np.zeros((B, LANES, 8)), np.zeros((B, LANES, 8))]
                for lane in range(LANES):
                    v = v0 + lane
                    if v >= vec:
                        continue  # codes, pairs 0: weights 0
                    k = v // 4 * 64 + v % 4 * 8
                    w_a[lane], w_b[lane] = decode4(codes[w + v * 8:w + v * 8 + 8], int(pairs[crow, k // group]),
                                                   int(pairs[crow, (k + 32) // group]))
                    for b in range(B):
                        xs[0][b, lane], xs[1][b, lane] = x[b, k:k + 8], x[b, k + 32:k + 40]
                for p, acc in enumerate(accs):
                    odd = xs[0][2 * p + 1] if 2 * p + 1 < B else np.zeros((LANES, 8))
                    odd_b = xs[1][2 * p + 1] if 2 * p + 1 < B else np.zeros((LANES, 8))
                    row_dot_add(acc[:, 0], w_a, xs[0][2 * p], odd, None)
                    row_dot_add(acc[:, 1], w_b, xs[1][2 * p], odd_b, None)
            for b in range(B):
                acc = accs[b // 2]
                out[crow, b] += row_dot_total(acc[:, 0] + acc[:, 1], b & 1)
    return out


def multiply_batched_4bit(chunks: list[np.ndarray], pairs: list[np.ndarray], x: np.ndarray, group: int,
                          chunk_cols: int) -> np.ndarray:
    """multiply_batched_4bit for one row group of 16 rows over its column-block chunks (codes
    [16 * chunk_cols / 2] and pairs [16][per row] each), x [B][kparts * chunk_cols]. Returns
    [16][B]: the 8 warps' partials summed."""
    B = x.shape[0]
    vec = chunk_cols // 16
    out = np.zeros((16, B))
    for warp in range(8):
        acc = np.zeros((LANES, 2, 4))
        for p, (codes, pr) in enumerate(zip(chunks, pairs)):
            for v0 in range(warp * 4, vec, 32):
                lo_a, lo_b, hi_a, hi_b, xa, xb = (np.zeros((LANES, 8)) for _ in range(6))
                for lane in range(LANES):
                    n, q = lane >> 2, lane & 3
                    k = v0 // 4 * 64 + q * 8
                    for row, (da, db) in ((n, (lo_a, lo_b)), (n + 8, (hi_a, hi_b))):
                        # w + nibble_offset(row, (warp * 4 + q) * 8) - warp * 32 + v0 * 8
                        base = nibble_offset(row, (warp * 4 + q) * 8, chunk_cols, True) - warp * 32 + v0 * 8
                        da[lane], db[lane] = decode4(codes[base:base + 8], int(pr[row, k // group]),
                                                     int(pr[row, (k + 32) // group]))
                    if n < B:
                        xa[lane] = x[n, p * chunk_cols + k: p * chunk_cols + k + 8]
                        xb[lane] = x[n, p * chunk_cols + k + 32: p * chunk_cols + k + 40]
                tile_dot_add(acc[:, 0], lo_a, hi_a, xa, None, None)
                tile_dot_add(acc[:, 1], lo_b, hi_b, xb, None, None)
        for lane in range(LANES):
            n, q = lane >> 2, lane & 3
            for j in range(2):
                if 2 * q + j < B:
                    out[n, 2 * q + j] += acc[lane, 0, j] + acc[lane, 1, j]
                    out[n + 8, 2 * q + j] += acc[lane, 0, 2 + j] + acc[lane, 1, 2 + j]
    return out
