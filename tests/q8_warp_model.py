"""A NumPy model of adamk/linear_multiply_8bit.cuh at the level of lanes and registers: each lane
loads the 16-byte code vector the CUDA code loads (its address arithmetic, code_offset's swizzle),
decodes it into two f16 vectors (decode8: bytes 0-7, then 8-15), loads the activations the CUDA
code loads, and the warp's MMAs run on the fragments of PTX's m16n8k16 layout (mma.cuh's RowDot /
TileDot register order), with add_scaled's scale per lane and total()'s diagonal. It checks the
kernel's index arithmetic and its scale-per-quad reasoning without a GPU; the decoding itself is
checked on the GPU (tests/gpu/test_dequant_gpu.py)."""
from __future__ import annotations

import numpy as np

LANES = 32


def mma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """m16n8k16 on per-lane fragments: a [32][4][2] (regs a0-a3, two elements each), b [32][2][2],
    c [32][4] -> d [32][4], laid out as PTX's mma.m16n8k16.row.col (groupID = lane / 4, tig =
    lane % 4): a0 (g, 2t..), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..); b0 (k 2t.., n g),
    b1 (k 2t + 8.., n g); c0, c1 (g, 2t..), c2, c3 (g + 8, 2t..)."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    C = np.zeros((16, 8))
    for lane in range(LANES):
        g, t = lane >> 2, lane & 3
        for i in range(2):
            A[g, 2 * t + i], A[g + 8, 2 * t + i] = a[lane, 0, i], a[lane, 1, i]
            A[g, 2 * t + 8 + i], A[g + 8, 2 * t + 8 + i] = a[lane, 2, i], a[lane, 3, i]
            B[2 * t + i, g], B[2 * t + 8 + i, g] = b[lane, 0, i], b[lane, 1, i]
            C[g, 2 * t + i], C[g + 8, 2 * t + i] = c[lane, i], c[lane, 2 + i]
    D = A @ B + C
    d = np.zeros((LANES, 4))
    for lane in range(LANES):
        g, t = lane >> 2, lane & 3
        d[lane] = [D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]]
    return d


def words(v: np.ndarray) -> np.ndarray:
    """8 values (a bf16 uint4) as its 4 words of 2 elements: .x .y .z .w."""
    return v.reshape(4, 2)


def row_dot_add(acc: np.ndarray, w: np.ndarray, x0: np.ndarray, x1: np.ndarray, scale: np.ndarray | None) -> None:
    """RowDot::add (scale None) or add_scaled into acc [32][4] (one accumulator of the pair, both
    MMAs of one vector summed). w, x0, x1: [32][8] per lane; scale [32] per lane."""
    W, X0, X1 = (np.stack([words(r) for r in m]) for m in (w, x0, x1))
    t = np.zeros((LANES, 4))
    for half in range(2):  # MMA 0: words x, y; MMA 1: z, w
        a = np.stack([X0[:, 2 * half], X1[:, 2 * half], X0[:, 2 * half + 1], X1[:, 2 * half + 1]], axis=1)
        b = np.stack([W[:, 2 * half], W[:, 2 * half + 1]], axis=1)
        t = mma(a, b, t)
    acc += t if scale is None else scale[:, None] * t


def row_dot_total(acc: np.ndarray, odd: int) -> float:
    """RowDot::total: the diagonal of D for sequence 2p + odd, summed over the warp."""
    s = 0.0
    for lane in range(LANES):
        n, c, r = lane >> 2, 2 * (lane & 3), 2 * odd
        if c == n:
            s += acc[lane, r]
        if c + 1 == n:
            s += acc[lane, r + 1]
    return s


def tile_dot_add(acc: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray, x: np.ndarray, s_lo, s_hi) -> None:
    """TileDot::add (s_lo None) or add_scaled: rows n (w_lo) and n + 8 (w_hi) times sequence n (x)."""
    L, H, X = (np.stack([words(r) for r in m]) for m in (w_lo, w_hi, x))
    t = np.zeros((LANES, 4))
    for half in range(2):
        a = np.stack([L[:, 2 * half], H[:, 2 * half], L[:, 2 * half + 1], H[:, 2 * half + 1]], axis=1)
        b = np.stack([X[:, 2 * half], X[:, 2 * half + 1]], axis=1)
        t = mma(a, b, t)
    if s_lo is None:
        acc += t
    else:
        acc += t * np.stack([s_lo, s_lo, s_hi, s_hi], axis=1)


def code_offset(row: int, byte: int, chunk_cols: int, swizzled: bool) -> int:
    return row * chunk_cols + (byte ^ ((row & 1) << 6) if swizzled else byte)


def multiply_rows_8bit(codes: np.ndarray, scales: np.ndarray, values: np.ndarray, x: np.ndarray, group: int,
                       wpr: int) -> np.ndarray:
    """multiply_rows_8bit for one chunk of whole rows: codes [rows * kc] (bytes as in the slot),
    scales [rows][per row], values(code bytes) -> float, x [B][kc]. Returns [rows][B]: the warps'
    parts of each row summed, scaled as the kernel scales them."""
    B, kc = x.shape
    rows = codes.size // kc
    vec = kc // 16
    out = np.zeros((rows, B))
    for crow in range(rows):
        for part in range(wpr):
            accs = [np.zeros((LANES, 2, 4)) for _ in range((B + 1) // 2)]
            for v0 in range(part * 32, vec, 32 * wpr):
                w_a, w_b, x_a, x_b = (np.zeros((LANES, 8)) for _ in range(4))
                xs = [np.zeros((B, LANES, 8)), np.zeros((B, LANES, 8))]
                sa, sb = np.zeros(LANES), np.zeros(LANES)
                for lane in range(LANES):
                    v = v0 + lane
                    if v >= vec:
                        continue
                    k = v // 4 * 64 + v % 4 * 8
                    base = code_offset(crow, v * 16, kc, False)
                    vals = values(codes[base:base + 16])
                    w_a[lane], w_b[lane] = vals[:8], vals[8:]
                    for b in range(B):
                        xs[0][b, lane], xs[1][b, lane] = x[b, k:k + 8], x[b, k + 32:k + 40]
                    if group:
                        sa[lane] = scales[crow, k // group]
                        sb[lane] = scales[crow, (k + 32) // group]
                for p, acc in enumerate(accs):
                    odd = xs[0][2 * p + 1] if 2 * p + 1 < B else np.zeros((LANES, 8))
                    odd_b = xs[1][2 * p + 1] if 2 * p + 1 < B else np.zeros((LANES, 8))
                    row_dot_add(acc[:, 0], w_a, xs[0][2 * p], odd, sa if group else None)
                    row_dot_add(acc[:, 1], w_b, xs[1][2 * p], odd_b, sb if group else None)
            row_scale = 1.0 if group else scales[crow, 0]
            for b in range(B):
                acc = accs[b // 2]
                out[crow, b] += row_dot_total(acc[:, 0] + acc[:, 1], b & 1) * row_scale
    return out


def multiply_batched_8bit(chunks: list[np.ndarray], scales: list[np.ndarray], values, x: np.ndarray, group: int,
                          chunk_cols: int) -> np.ndarray:
    """multiply_batched_8bit for one row group of 16 rows over its column-block chunks (codes
    [16 * chunk_cols] and scales [16][per row] each), x [B][kparts * chunk_cols]. Returns [16][B]:
    the 8 warps' partials summed."""
    B = x.shape[0]
    vec = chunk_cols // 16
    swz = chunk_cols % 128 == 0
    out = np.zeros((16, B))
    for warp in range(8):
        acc = np.zeros((LANES, 2, 4))
        for p, (codes, sc) in enumerate(zip(chunks, scales)):
            for v0 in range(warp * 4, vec, 32):
                lo_a, lo_b, hi_a, hi_b, xa, xb = (np.zeros((LANES, 8)) for _ in range(6))
                s = {key: np.zeros(LANES) for key in ("lo_a", "hi_a", "lo_b", "hi_b")}
                for lane in range(LANES):
                    n, q = lane >> 2, lane & 3
                    k = v0 // 4 * 64 + q * 8
                    for row, (da, db) in ((n, (lo_a, lo_b)), (n + 8, (hi_a, hi_b))):
                        # w + code_offset(row, (warp * 4 + q) * 16) - warp * 64 + v0 * 16
                        base = code_offset(row, (warp * 4 + q) * 16, chunk_cols, swz) - warp * 64 + v0 * 16
                        vals = values(codes[base:base + 16])
                        da[lane], db[lane] = vals[:8], vals[8:]
                    if n < B:
                        xa[lane] = x[n, p * chunk_cols + k: p * chunk_cols + k + 8]
                        xb[lane] = x[n, p * chunk_cols + k + 32: p * chunk_cols + k + 40]
                    if group:
                        s["lo_a"][lane], s["hi_a"][lane] = sc[n, k // group], sc[n + 8, k // group]
                        s["lo_b"][lane], s["hi_b"][lane] = sc[n, (k + 32) // group], sc[n + 8, (k + 32) // group]
                tile_dot_add(acc[:, 0], lo_a, hi_a, xa, s["lo_a"] if group else None, s["hi_a"] if group else None)
                tile_dot_add(acc[:, 1], lo_b, hi_b, xb, s["lo_b"] if group else None, s["hi_b"] if group else None)
        last = scales[-1]
        for lane in range(LANES):
            n, q = lane >> 2, lane & 3
            s_lo, s_hi = (1.0, 1.0) if group else (last[n, 0], last[n + 8, 0])
            for j in range(2):
                if 2 * q + j < B:
                    out[n, 2 * q + j] += (acc[lane, 0, j] + acc[lane, 1, j]) * s_lo
                    out[n + 8, 2 * q + j] += (acc[lane, 0, 2 + j] + acc[lane, 1, 2 + j]) * s_hi
    return out
