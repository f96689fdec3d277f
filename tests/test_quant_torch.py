"""The torch quantizers against the numpy ones, bit for bit (codes and scales): random weights with
zero rows and groups, values on rounding ties, subnormal E4M3 values, bf16 inputs."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import (QuantizedMatrix, QuantizedTensor, encode_e4m3, encode_e4m3_torch, quantize_fp8,
                          quantize_fp8_torch, quantize_int8, quantize_int8_torch)

torch = pytest.importorskip("torch")


def same(t: QuantizedTensor, m: QuantizedMatrix) -> None:
    assert t.fmt == m.fmt and t.group == m.group
    assert t.q.dtype == torch.uint8 and t.scales.dtype == torch.float32
    assert (t.q.numpy() == m.q).all(), np.argwhere(t.q.numpy() != m.q)[:5]
    assert (t.scales.numpy().view(np.uint32) == m.scales.view(np.uint32)).all()
    assert (t.dequantize().numpy() == m.dequantize()).all()


def weights(rng, n: int, k: int) -> np.ndarray:
    w = (rng.standard_normal((n, k)) * np.exp(rng.uniform(-12, 4, (n, 1)))).astype(np.float32)
    w[rng.integers(n)] = 0  # a zero row
    w[rng.integers(n), :32] = 0  # a zero group
    w[rng.integers(n), 5] = -0.0
    return w


@pytest.mark.parametrize("group", [None, 32, 128])
def test_torch_quantizers_match_numpy(group):
    rng = np.random.default_rng()
    w = weights(rng, 37, 256)
    same(quantize_fp8_torch(torch.from_numpy(w), group), quantize_fp8(w, group))
    same(quantize_int8_torch(torch.from_numpy(w), group), quantize_int8(w, group))
    wb = torch.from_numpy(w).to(torch.bfloat16)  # bf16 weights widen exactly
    wf = wb.float().numpy()
    same(quantize_fp8_torch(wb, group), quantize_fp8(wf, group))
    same(quantize_int8_torch(wb, group), quantize_int8(wf, group))


def test_ties_round_to_even():
    """Rows whose amax makes the scale exactly 1: their other values sit on rounding ties."""
    rng = np.random.default_rng()
    # int8: amax 127 -> scale 1; k + 0.5 rounds to the even neighbour
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5], np.float32)
    w = np.zeros((2, 32), np.float32)
    w[:, 0] = 127
    w[0, 1:9] = ties
    w[1, 1:9] = rng.permutation(ties)
    m = quantize_int8(w, 32)
    assert m.scales[0, 0] == 1 and list(m.q.view(np.int8)[0, 1:9]) == [0, 2, 2, 0, -2, -2, 126, -126]
    same(quantize_int8_torch(torch.from_numpy(w), 32), m)
    # fp8: amax 448 -> scale 1; midpoints between E4M3 values, normal and subnormal
    mids = np.array([1.0625, 1.1875, 3.25 + 0.125, -1.0625, 2.0 ** -10, 3 * 2.0 ** -10, -5 * 2.0 ** -10,
                     416 + 16, 0.0, -0.0], np.float32)
    w = np.zeros((1, 64), np.float32)
    w[0, 0] = 448
    w[0, 1:1 + mids.size] = mids
    w[0, 20:40] = rng.uniform(-448, 448, 20).astype(np.float32)
    m = quantize_fp8(w)
    assert m.scales[0, 0] == 1
    same(quantize_fp8_torch(torch.from_numpy(w)), m)


def test_encode_e4m3_torch_matches_numpy_and_torch():
    rng = np.random.default_rng()
    x = np.concatenate([rng.standard_normal(5000) * np.exp(rng.uniform(-14, 7, 5000)),
                        [0.0, -0.0, 448.0, -448.0, 464.0, 1e9, -np.inf, np.inf, np.nan, 2.0 ** -10, 2.0 ** -9]]
                       ).astype(np.float32)
    got = encode_e4m3_torch(torch.from_numpy(x)).numpy()
    assert (got == encode_e4m3(x)).all()
    ok = np.abs(x) <= 448  # torch's own conversion agrees wherever it does not overflow
    native = torch.from_numpy(x[ok]).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert (got[ok] == native).all()


def test_quantized_tensor_round_trips_and_regroups():
    rng = np.random.default_rng()
    m = quantize_int8(weights(rng, 8, 128), 64)
    t = QuantizedTensor.from_matrix(m)
    same(t, m)
    same(t.regroup(32), m.regroup(32))
    back = t.to_matrix()
    assert (back.q == m.q).all() and (back.scales == m.scales).all()
    with pytest.raises(ValueError, match="does not divide"):
        t.regroup(48)
    with pytest.raises(ValueError, match="NaN"):
        quantize_fp8_torch(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="group 48 does not divide K = 64"):
        quantize_int8_torch(torch.zeros(2, 64), 48)


def test_row_blocks_change_nothing(monkeypatch):
    """Quantizing a few rows at a time (the GPU's memory bound) gives the same codes and scales."""
    from ada_mk.quant import torch_quant

    rng = np.random.default_rng()
    w = weights(rng, 45, 128)
    monkeypatch.setattr(torch_quant, "ROW_BLOCK_ELEMENTS", 128 * 7)  # 7 rows a block
    same(quantize_fp8_torch(torch.from_numpy(w)), quantize_fp8(w))
    same(quantize_int8_torch(torch.from_numpy(w), 32), quantize_int8(w, 32))
