"""The 4-bit multiply's lane arithmetic (tests/q4_warp_model.py, a NumPy mirror of
adamk/linear_multiply_4bit.cuh: addresses, nibble order, the bf16 magic-number decode and the
bf16x2 fma, on PTX's MMA fragment layout) over chunks packed by the host
(ada_mk.runtime.weights_int4.pack_chunks): each row's result equals, to float64 rounding, the row of
bf16(q * bf16(scale) + bf16(offset)) (torch's bf16 conversions of the source's own scales, offsets
and exact products) dotted with x; for groups 32, 64 and 128, symmetric and asymmetric sources,
one sequence (whole-row chunks, several warps per row) and the batched multiply (16-row chunks,
each bank swizzle), with random weights and inputs."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import quantize_int4
from ada_mk.runtime.weights_int4 import int4_source, pack_chunks
from ada_mk.search.plan import LinearTiling
from tests.q4_warp_model import multiply_batched_4bit, multiply_rows_4bit

torch = pytest.importorskip("torch")


def _source(group: int, n: int, k: int, symmetric: bool, rng):
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 0.5, (n, 1)).astype(np.float32)
    return quantize_int4(w, group, symmetric=symmetric)


def _expected(m, x: np.ndarray) -> np.ndarray:
    """The kernel's weights from the source matrix by torch: bf16(q * bf16(s) + bf16(o)), the
    product and sum exact in float64, one rounding to bf16; dotted with x in float64."""
    n, k = m.q.shape
    s = torch.from_numpy(m.scales).to(torch.bfloat16).double()
    o = torch.from_numpy(m.offsets if m.offsets is not None else m.scales * np.float32(-8)).to(torch.bfloat16).double()
    q = torch.from_numpy(m.q.astype(np.float64)).reshape(n, -1, m.group)
    w = (q * s[..., None] + o[..., None]).to(torch.bfloat16).double().reshape(n, k).numpy()
    return w @ x.T


def _chunk(flat: np.ndarray, t: LinearTiling, i: int):
    c = flat.reshape(-1, t.chunk_bytes)[i]
    codes = c[:t.code_bytes]
    pairs = np.ascontiguousarray(c[t.code_bytes:t.code_bytes + 4 * t.chunk_rows * t.scales_per_row]).view("<u4")
    return codes, pairs.reshape(t.chunk_rows, t.scales_per_row)


def _pack(m, t):
    a = int4_source("w", m, t)
    return pack_chunks(a.q, a.scales, a.offsets, t)


@pytest.mark.parametrize("group,symmetric", [(32, True), (64, False), (128, False)])
@pytest.mark.parametrize("batch,wpr", [(1, 2), (1, 4), (3, 1)])
def test_rows_multiply_lanes(group, symmetric, batch, wpr):
    rng = np.random.default_rng()
    k = 512
    t = LinearTiling(8, k, 8, 1, wpr, False, True, "int4", group)  # chunks of 8 // wpr whole rows
    m = _source(group, t.n, k, symmetric, rng)
    flat = _pack(m, t)
    x = rng.standard_normal((batch, k)).astype(np.float32).astype(np.float64)
    got = np.concatenate([multiply_rows_4bit(*_chunk(flat, t, i), x, group, wpr) for i in range(t.chunks)])
    np.testing.assert_allclose(got, _expected(m, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("group,symmetric", [(32, True), (64, False), (128, False)])
@pytest.mark.parametrize("k,wpr", [(512, 1), (256, 1), (384, 2), (768, 2)])  # swizzles r % 4, r % 4, none, (r / 2) % 2
def test_batched_multiply_lanes(group, symmetric, k, wpr):
    rng = np.random.default_rng()
    t = LinearTiling(16, k, 16, 1, wpr, True, True, "int4", group)
    if not t.whole_column_blocks:
        pytest.skip(f"{k // wpr} columns are not whole blocks of group {group}")
    m = _source(group, t.n, k, symmetric, rng)
    flat = _pack(m, t)
    x = rng.standard_normal((5, k)).astype(np.float32).astype(np.float64)
    parts = [_chunk(flat, t, i) for i in range(t.chunks)]
    got = multiply_batched_4bit([c for c, _ in parts], [p for _, p in parts], x, group, t.chunk_cols)
    np.testing.assert_allclose(got, _expected(m, x), rtol=1e-9, atol=1e-9)
