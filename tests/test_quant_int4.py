"""Int4Matrix (its two formulas, regroup, take_rows, checks), the round-to-nearest quantizer
quantize_int4 (asymmetric and symmetric), and its torch twin bit for bit on CPU."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import Int4Matrix, Int4Tensor, quantize_int4, quantize_int4_torch
from ada_mk.quant import int4_torch

torch = pytest.importorskip("torch")


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def weights(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    w[0, :32] = 0.0               # a zero group (group 32)
    w[1, :32] = 0.125             # a constant group
    w[2, :64] = np.abs(w[2, :64])  # a group above zero: the zero point clamps at 0
    w[3, 5] = 1.5                 # an outlier
    return w


def test_formulas() -> None:
    q = np.array([[0, 3, 8, 15]], np.uint8)
    s = np.array([[0.5, 2.0]], np.float32)
    o = np.array([[-1.0, 0.25]], np.float32)
    assert np.array_equal(Int4Matrix(q, s, o, 2).dequantize(), [[-1.0, 0.5, 16.25, 30.25]])
    sym = Int4Matrix(q, s, None, 2)
    assert sym.symmetric and np.array_equal(sym.dequantize(), [[-4.0, -2.5, 0.0, 14.0]])
    r = Int4Matrix(q, s, o, 2).regroup(1)
    assert r.group == 1 and np.array_equal(r.dequantize(), Int4Matrix(q, s, o, 2).dequantize())
    m = Int4Matrix(np.array([[1, 2], [3, 4]], np.uint8), np.array([[1.0], [2.0]], np.float32), None, 2)
    assert np.array_equal(m.take_rows(np.array([1, 0])).dequantize(), m.dequantize()[::-1])
    assert Int4Matrix(q, s, o, 2).nbytes == 2 + 8 + 8


def test_checks() -> None:
    q = np.zeros((2, 4), np.uint8)
    s = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="codes must lie in"):
        Int4Matrix(q + 16, s, None, 2)
    with pytest.raises(ValueError, match="group 3 does not divide K = 4"):
        Int4Matrix(q, s, None, 3)
    with pytest.raises(ValueError, match="offsets must be float32"):
        Int4Matrix(q, s, s.astype(np.float64), 2)
    with pytest.raises(ValueError, match="scales must be float32"):
        Int4Matrix(q, s[:, :1], None, 2)


def test_quantize_asymmetric() -> None:
    w = weights(8, 256, 0)
    m = quantize_int4(w, group=32)
    assert m.group == 32 and not m.symmetric and m.q.max() <= 15
    deq = m.dequantize()
    assert np.array_equal(deq[0, :32], np.zeros(32)) and np.array_equal(deq[1, :32], np.full(32, 0.125))
    scales = np.repeat(m.scales, 32, axis=1)
    lo = w.reshape(8, 8, 32).min(axis=2)
    straddle = np.repeat((lo <= 0) & (w.reshape(8, 8, 32).max(axis=2) >= 0), 32, axis=1)
    err = np.abs(deq - w)
    assert (err[straddle] <= 0.5 * scales[straddle] * (1 + 1e-5)).all()  # round to nearest
    # the affine form (q - zero) * scale differs from q * scale + offset by float32 roundings only
    zero = np.where(m.scales == 0, 0, np.rint(-m.offsets / np.where(m.scales == 0, 1, m.scales)))
    affine = (m.q.astype(np.float64) - np.repeat(zero, 32, axis=1)) * scales
    live = scales > 0
    assert (np.abs(deq - affine)[live] < 2.0 ** -19 * scales[live]).all()
    # scale and zero as the rule states
    assert np.array_equal(m.scales, ((w.reshape(8, 8, 32).max(axis=2) - lo) / np.float32(15)).astype(np.float32))


def test_quantize_symmetric() -> None:
    w = weights(8, 256, 1)
    m = quantize_int4(w, group=32, symmetric=True)
    assert m.symmetric and m.group == 32
    deq = m.dequantize()
    assert np.array_equal(deq[0, :32], np.zeros(32))
    g = w.reshape(8, 8, 32)
    big = np.where(g.max(axis=2) >= -g.min(axis=2), g.max(axis=2), g.min(axis=2))
    assert np.array_equal(m.scales, big / np.float32(-8))
    # the value of largest magnitude is exact (code 0); the rest within a step (half, or clamped at 7)
    at = (g == big[:, :, None]) & (big[:, :, None] != 0)
    assert (m.q.reshape(8, 8, 32)[at] == 0).all() and np.array_equal(deq.reshape(8, 8, 32)[at], g[at])
    s = np.abs(np.repeat(m.scales, 32, axis=1))
    assert (np.abs(deq - w) <= 1.0 * s * (1 + 1e-5)).all()


def test_quantize_bad_inputs() -> None:
    with pytest.raises(ValueError, match="group 100 does not divide K = 256"):
        quantize_int4(np.zeros((2, 256), np.float32), group=100)
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize_int4(np.full((2, 128), np.nan, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        quantize_int4(np.zeros(128, np.float32))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [32, 128])
def test_torch_twin_bit_for_bit(symmetric: bool, group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int4_torch, "ROW_BLOCK_ELEMENTS", 3 * 256)  # several row blocks
    w = weights(16, 256, 2 + group)
    for dtype in (torch.float32, torch.bfloat16):
        t = torch.from_numpy(w).to(dtype)
        ref = quantize_int4(t.float().numpy(), group=group, symmetric=symmetric)
        got = quantize_int4_torch(t, group=group, symmetric=symmetric)
        assert isinstance(got, Int4Tensor) and got.symmetric == symmetric
        m = got.to_matrix()
        assert np.array_equal(m.q, ref.q) and np.array_equal(bits(m.scales), bits(ref.scales))
        if symmetric:
            assert m.offsets is None
        else:
            assert np.array_equal(bits(m.offsets), bits(ref.offsets))
        assert np.array_equal(bits(got.dequantize().numpy()), bits(ref.dequantize()))
        back = Int4Tensor.from_matrix(ref)
        assert np.array_equal(bits(back.dequantize().numpy()), bits(ref.dequantize()))


def test_torch_bad_inputs() -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize_int4_torch(torch.full((2, 128), float("inf")))
    with pytest.raises(ValueError, match="group 96 does not divide K = 128"):
        quantize_int4_torch(torch.zeros(2, 128), group=96)


def test_torch_tensor_checks() -> None:
    q = torch.zeros(2, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="group 3 does not divide K = 4"):
        Int4Tensor(q, torch.zeros(2, 1), None, 3)
    with pytest.raises(ValueError, match="offsets must be float32"):
        Int4Tensor(q, torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="q must be a 2-D uint8 tensor"):
        Int4Tensor(q.int(), torch.zeros(2, 2), None, 2)
