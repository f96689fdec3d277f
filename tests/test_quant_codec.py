"""ada_mk.quant's FP8 E4M3 codec against torch.float8_e4m3fn (all 256 codes, every rounding tie,
random data), the fp8/int8 quantizers' round trips and error bounds, QuantizedMatrix, Q8_0 bytes."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import (E4M3_MAX, QuantizedMatrix, decode_e4m3, encode_e4m3, q8_0_bytes, q8_0_matrix,
                          quantize_fp8, quantize_int8)

torch = pytest.importorskip("torch")

CODES = np.arange(256, dtype=np.uint8)


def torch_decode(codes: np.ndarray) -> np.ndarray:
    return torch.from_numpy(codes).view(torch.float8_e4m3fn).float().numpy()


def torch_encode(x: np.ndarray) -> np.ndarray:
    """torch's cast of x clamped to +-448 (NaN kept): saturation does not depend on whether this
    torch version's cast saturates or overflows to NaN."""
    x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    x = torch.where(x.isnan(), x, x.clamp(-448.0, 448.0))
    return x.to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def test_decode_all_codes_bit_exact() -> None:
    got, want = decode_e4m3(CODES), torch_decode(CODES)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan) and CODES[nan].tolist() == [0x7F, 0xFF]
    assert np.array_equal(np.signbit(got), np.signbit(want))  # -0.0 and -NaN included
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert got[0x7E] == E4M3_MAX and got[0x01] == 2.0 ** -9 and got[0x08] == 2.0 ** -6  # max, subnormal, normal


def test_encode_round_trips_every_code() -> None:
    ok = ~np.isnan(decode_e4m3(CODES))
    assert np.array_equal(encode_e4m3(decode_e4m3(CODES))[ok], CODES[ok])
    assert encode_e4m3(decode_e4m3(CODES))[~ok].tolist() == [0x7F, 0xFF]


def test_encode_ties_and_neighbours_match_torch() -> None:
    """Every midpoint between neighbouring codes (round half to even) and the floats next to it."""
    v = np.unique(decode_e4m3(CODES[:0x7F]).astype(np.float64))  # 0 .. 448
    mids = (v[:-1] + v[1:]) / 2  # exact in float32
    x = np.concatenate([mids, v, [464.0, 470.0, 479.9, 480.0, 1e4, 2.0 ** -10, 2.0 ** -11]]).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
    x = np.concatenate([x, -x])
    assert np.array_equal(encode_e4m3(x), torch_encode(x))


def test_encode_random_and_special_values_match_torch() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * s
                        for s in (1e-4, 3e-3, 0.05, 1.0, 30.0, 300.0, 1e4)])
    x = np.concatenate([x, np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3e38, -3e38, 1e-45],
                                    np.float32)])
    assert np.array_equal(encode_e4m3(x), torch_encode(x))


@pytest.mark.parametrize("group", [None, 16, 64])
def test_quantize_fp8_round_trip_and_bound(group: int | None) -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((24, 128)) * rng.uniform(0.01, 3, (24, 1))).astype(np.float32)
    w[3] = 0.0  # a zero row: scale 0, no NaN
    w[5, :16] = 0.0
    m = quantize_fp8(w, group)
    g = 128 if group is None else group
    assert m.fmt == "fp8" and m.group == g and m.scales.shape == (24, 128 // g) and m.q.dtype == np.uint8
    wg = w.reshape(24, 128 // g, g)
    assert np.array_equal(m.scales, (np.abs(wg).max(2) / np.float32(448)).astype(np.float32))
    d = m.dequantize()
    assert d.dtype == np.float32 and np.isfinite(d).all()
    assert np.array_equal(d[3], np.zeros(128, np.float32)) and m.scales[3].max() == 0
    # the largest magnitude of each group is +-448 exactly
    amax_at = np.abs(wg).argmax(2)
    codes = np.take_along_axis(m.q.reshape(24, -1, g), amax_at[:, :, None], 2)[:, :, 0]
    nonzero = m.scales > 0
    assert np.all((codes[nonzero] & 0x7F) == 0x7E)
    # error: half an E4M3 ulp (2**-4 relative for normals, 2**-10 x scale for subnormals)
    s = np.repeat(m.scales, g, axis=1)
    bound = np.maximum(np.abs(w) * 2.0 ** -4, s * 2.0 ** -10) * (1 + 1e-6) + 1e-30
    assert np.all(np.abs(d - w) <= bound)
    # and it is the nearest code: what torch's cast gives
    safe = np.where(s == 0, 1, s).astype(np.float32)
    assert np.array_equal(m.q, torch_encode(w / safe))


@pytest.mark.parametrize("group", [32, 128, None])
def test_quantize_int8_round_trip_and_bound(group: int | None) -> None:
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((16, 256)) * 0.05).astype(np.float32)
    w[7] = 0.0
    m = quantize_int8(w, group)
    g = 256 if group is None else group
    assert m.fmt == "int8" and m.group == g and m.scales.shape == (16, 256 // g)
    q = m.q.view(np.int8)
    assert q.min() >= -127 and q.max() <= 127 and np.abs(q).max() == 127
    d = m.dequantize()
    assert np.isfinite(d).all() and np.array_equal(d[7], np.zeros(256, np.float32))
    s = np.repeat(m.scales, g, axis=1)
    assert np.all(np.abs(d - w) <= s * (0.5 + 1e-5))
    assert np.array_equal(d, q.astype(np.float32) * s)  # W = q x scale
    # round half to even: w / scale exactly x.5 rounds to the even integer
    t = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 127.0] + [0.0] * 26], np.float32)
    assert quantize_int8(t).q.view(np.int8)[0, :6].tolist() == [0, 2, 2, 0, -2, 127]


def test_quantizer_bad_inputs() -> None:
    with pytest.raises(ValueError, match="group 48 does not divide K = 64"):
        quantize_int8(np.zeros((2, 64), np.float32), 48)
    with pytest.raises(ValueError, match="2-D"):
        quantize_fp8(np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        quantize_fp8(np.full((2, 4), np.inf, np.float32))


def test_regroup_is_exact() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 96)).astype(np.float32)
    for m in (quantize_fp8(w), quantize_int8(w, 96), quantize_int8(w, 32)):
        for g in (32, 16, 8, 1):
            if m.group % g:
                continue
            r = m.regroup(g)
            assert r.group == g and r.scales.shape == (8, 96 // g) and r.q is m.q
            assert np.array_equal(r.dequantize(), m.dequantize())
    with pytest.raises(ValueError, match="does not divide the current group 32"):
        quantize_int8(w, 32).regroup(12)
    with pytest.raises(ValueError, match="does not divide the current group 32"):
        quantize_int8(w, 32).regroup(64)


def test_matrix_validation_and_rows() -> None:
    q = np.zeros((4, 64), np.uint8)
    with pytest.raises(ValueError, match="fmt"):
        QuantizedMatrix(q, np.zeros((4, 1), np.float32), "int4", 64)
    with pytest.raises(ValueError, match="scales must be float32"):
        QuantizedMatrix(q, np.zeros((4, 2), np.float32), "fp8", 64)
    with pytest.raises(ValueError, match="uint8"):
        QuantizedMatrix(q.view(np.int8), np.zeros((4, 1), np.float32), "int8", 64)
    m = quantize_int8(np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32))
    order = np.array([2, 0, 3, 1])
    assert np.array_equal(m.take_rows(order).dequantize(), m.dequantize()[order])
    assert m.nbytes == 4 * 64 + 4 * 2 * 4


def test_q8_0_bytes_round_trip() -> None:
    m = quantize_int8(np.random.default_rng(5).standard_normal((6, 64)).astype(np.float32), 32)
    m = QuantizedMatrix(m.q, m.scales.astype(np.float16).astype(np.float32), "int8", 32)  # fp16 d
    raw = q8_0_bytes(m)
    assert raw.shape == (6, 2 * 34)
    back = q8_0_matrix(raw, (6, 64))
    assert np.array_equal(back.q, m.q) and np.array_equal(back.scales, m.scales)
    with pytest.raises(ValueError, match="fp16"):
        q8_0_bytes(QuantizedMatrix(m.q, m.scales + np.float32(1e-7), "int8", 32))
