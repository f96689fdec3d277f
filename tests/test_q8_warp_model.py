"""The 8-bit multiply's lane arithmetic (tests/q8_warp_model.py, a NumPy mirror of
adamk/linear_multiply_8bit.cuh on PTX's MMA fragment layout) over chunks packed by the host
(ada_mk.runtime.weights_q8.pack_chunks): each row's result equals value x scale dotted with x, for
fp8 and int8, per-row and per-group scales, one sequence (whole-row chunks, several warps per row)
and the batched multiply (16-row chunks, swizzled and not), with random weights and inputs."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import decode_e4m3, quantize_fp8, quantize_int8
from ada_mk.runtime.weights_q8 import pack_chunks
from ada_mk.search.plan import LinearTiling
from tests.q8_warp_model import multiply_batched_8bit, multiply_rows_8bit

CASES = [("fp8", 0), ("fp8", 128), ("int8", 32), ("int8", 64)]


def _values(fmt: str):
    if fmt == "fp8":
        return lambda b: decode_e4m3(np.asarray(b, np.uint8)).astype(np.float64)
    return lambda b: np.asarray(b, np.float64) - 128  # stored value + 128


def _quantized(fmt: str, group: int, n: int, k: int, rng):
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.1, 3.0, (n, 1)).astype(np.float32)
    m = (quantize_fp8 if fmt == "fp8" else quantize_int8)(w, group or None)
    exact = m.values().astype(np.float64).reshape(n, -1, m.group) * m.scales.astype(np.float64)[:, :, None]
    return m, exact.reshape(n, k)  # value x scale without float32's rounding of the product


def _chunk(flat: np.ndarray, t: LinearTiling, i: int):
    c = flat.reshape(-1, t.chunk_bytes)[i]
    codes = c[:t.chunk_rows * t.chunk_cols]
    scales = np.ascontiguousarray(c[codes.size:codes.size + 4 * t.chunk_rows * t.scales_per_row]).view("<f4")
    return codes, scales.reshape(t.chunk_rows, t.scales_per_row).astype(np.float64)


@pytest.mark.parametrize("fmt,group", CASES)
@pytest.mark.parametrize("batch,wpr", [(1, 2), (1, 4), (3, 1)])
def test_rows_multiply_lanes(fmt, group, batch, wpr):
    rng = np.random.default_rng()
    k = 512
    t = LinearTiling(8, k, 8, 1, wpr, False, True, fmt, group)  # chunks of 8 // wpr whole rows
    m, w = _quantized(fmt, group, t.n, k, rng)
    flat = pack_chunks(m.q, m.scales, t)
    x = rng.standard_normal((batch, k)).astype(np.float32).astype(np.float64)
    got = np.concatenate([multiply_rows_8bit(*_chunk(flat, t, i), _values(fmt), x, group, wpr)
                          for i in range(t.chunks)])
    np.testing.assert_allclose(got, w @ x.T, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fmt,group", CASES)
@pytest.mark.parametrize("k,wpr", [(512, 2), (384, 2)])  # chunk columns 256 (swizzled) and 192 (not)
def test_batched_multiply_lanes(fmt, group, k, wpr):
    rng = np.random.default_rng()
    t = LinearTiling(16, k, 16, 1, wpr, True, True, fmt, group)
    if not t.whole_column_blocks:
        pytest.skip(f"{k // wpr} columns are not whole blocks of group {group}")
    m, w = _quantized(fmt, group, t.n, k, rng)
    flat = pack_chunks(m.q, m.scales, t)
    x = rng.standard_normal((5, k)).astype(np.float32).astype(np.float64)
    parts = [_chunk(flat, t, i) for i in range(t.chunks)]
    got = multiply_batched_8bit([c for c, _ in parts], [s for _, s in parts], _values(fmt), x, group, t.chunk_cols)
    np.testing.assert_allclose(got, w @ x.T, rtol=1e-9, atol=1e-9)
