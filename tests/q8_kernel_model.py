"""A NumPy model of what the kernel computes from an 8-bit segment, written from the contract
(docs/quantized-weights.md, "The packed chunk") alone, not from the packer: for each chunk, read
its bytes where the ring puts them, decode each code (fp8: its E4M3 value; int8: byte - 128), dot
each scale group of the chunk's columns with x, scale the group's sum; with one scale per row,
sum the row's dots over all its chunks and apply the row's scale once at the end."""
from __future__ import annotations

import numpy as np

from ada_mk.quant import decode_e4m3
from ada_mk.search.plan import LinearTiling


def chunk_byte_columns(t: LinearTiling) -> tuple[np.ndarray, np.ndarray]:
    """(row in chunk, column in chunk) that each code byte of a chunk holds."""
    cr, cc = t.chunk_rows, t.chunk_cols
    b = np.arange(cr * cc)
    r, p = b // cc, b % cc
    if t.batched and cc % 128 == 0:  # odd rows: the two 64-byte halves of each 128-byte line swapped
        p = np.where(r % 2 == 1, p ^ 64, p)
    block, bb = p // 64, p % 64
    j, i = bb // 16, bb % 16
    col = np.where(i < 8, 8 * j + i, 32 + 8 * j + (i - 8))
    return r, block * 64 + col


def kernel_matvec(seg_bytes: np.ndarray, t: LinearTiling, x: np.ndarray) -> np.ndarray:
    """y [N] (float64) = what the kernel's tasks compute from the segment's bytes for input x [K]."""
    cr, cc, kp, ks = t.chunk_rows, t.chunk_cols, t.kparts, t.ksplit
    spr = t.scales_per_row
    nch = t.tasks * t.chunks
    a = np.asarray(seg_bytes, np.uint8).reshape(nch, t.chunk_bytes)
    codes = a[:, :cr * cc]
    vals = decode_e4m3(codes) if t.weights == "fp8" else codes.astype(np.float64) - 128
    vals = vals.astype(np.float64)
    scales = np.ascontiguousarray(a[:, cr * cc: cr * cc + 4 * cr * spr]).view("<f4").reshape(nch, cr, spr)
    assert not a[:, cr * cc + 4 * cr * spr:].any(), "padding after the scales is not zero"

    r, col = chunk_byte_columns(t)
    ch = np.arange(nch)
    task, c = ch // t.chunks, ch % t.chunks
    tile, split = task // ks, task % ks
    rg, part = c // kp, c % kp
    col0 = split * t.kc + part * cc  # the chunk's first column of the matrix
    xs = np.asarray(x, np.float64)[col0[:, None] + col[None, :]]  # [chunk, byte]
    g = col // t.group if t.group else np.zeros_like(col)
    onehot = np.zeros((cr * cc, cr * spr))
    onehot[np.arange(cr * cc), r * spr + g] = 1.0
    dots = ((vals * xs) @ onehot).reshape(nch, cr, spr)  # per row of the chunk and scale group
    rows = tile[:, None] * t.rows + rg[:, None] * cr + np.arange(cr)[None, :]  # [chunk, row in chunk]
    npad = t.tiles * t.rows
    y = np.zeros(npad)
    if t.group:
        np.add.at(y, rows.reshape(-1), (dots * scales).sum(axis=2).reshape(-1))
    else:
        np.add.at(y, rows.reshape(-1), dots[:, :, 0].reshape(-1))
        row_scale = np.zeros(npad)
        row_scale[rows.reshape(-1)] = scales[:, :, 0].reshape(-1)
        for k in range(nch):  # every chunk of a row carries the row's one scale
            assert (scales[k, :, 0] == row_scale[rows[k]]).all(), "chunks of a row disagree on its scale"
        y = y * row_scale
    assert (y[t.n:] == 0).all(), "padding rows contribute"
    return y[:t.n]
