"""GGUF Q4_0 / Q4_1 / Q4_K blocks read into Int4Matrix: bit for bit gguf's own dequantization on
random blocks (every code, every 6-bit scale and minimum, subnormal and negative fp16 fields), and
the block arithmetic by hand for one Q4_K block."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import Int4Matrix, QuantFormatError, gguf_int4_matrix, q4_bytes, q4_k_scale_min, quantize_int4

gguf = pytest.importorskip("gguf")

BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
PER = {"Q4_0": 32, "Q4_1": 32, "Q4_K": 256}
FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2)}


def random_blocks(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    """Random raw bytes for an [n, k] tensor, its fp16 fields random finite values (normal and
    subnormal, either sign), uint8 [n, k / per * bytes]."""
    rng = np.random.default_rng(seed)
    nb = k // PER[qtype]
    b = rng.integers(0, 256, (n, nb, BYTES[qtype]), dtype=np.uint8)
    for at in FP16_FIELDS[qtype]:
        f = (rng.standard_normal((n, nb)) * 10.0 ** rng.integers(-7, 3, (n, nb))).astype(np.float16)
        f[0, 0] = np.float16(6e-8)  # the smallest subnormal
        b[:, :, at:at + 2] = f.view(np.uint8).reshape(n, nb, 2)
    return b.reshape(n, -1)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_gguf_dequantize(qtype: str, seed: int) -> None:
    n, k = 24, 512
    raw = random_blocks(qtype, n, k, seed)
    m = gguf_int4_matrix(raw, qtype, (n, k), "blk.0.ffn_up.weight")
    assert isinstance(m, Int4Matrix) and m.shape == (n, k) and m.group == 32
    assert m.symmetric == (qtype == "Q4_0")
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(n, k)
    assert np.array_equal(bits(m.dequantize()), bits(ref))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K"])
def test_matches_gguf_quantized_weights(qtype: str) -> None:
    """Blocks gguf's own quantizer wrote from Gaussian weights read the same way."""
    w = np.random.default_rng(3).standard_normal((16, 256)).astype(np.float32)
    qt = gguf.GGMLQuantizationType[qtype]
    try:
        raw = gguf.quants.quantize(w, qt)
    except NotImplementedError:
        pytest.skip(f"this gguf version cannot quantize {qtype}")
    m = gguf_int4_matrix(raw, qtype, w.shape)
    assert np.array_equal(bits(m.dequantize()), bits(gguf.quants.dequantize(raw, qt).reshape(w.shape)))
    assert np.abs(m.dequantize() - w).max() < 0.5


def test_q4_k_by_hand() -> None:
    """One Q4_K block packed here from chosen scales, minimums and codes."""
    rng = np.random.default_rng(7)
    sc = rng.integers(0, 64, 8).astype(np.uint8)
    mn = rng.integers(0, 64, 8).astype(np.uint8)
    sc[7], mn[7] = 63, 63
    codes = rng.integers(0, 16, (8, 32)).astype(np.uint8)
    d, dmin = np.float16(0.015625), np.float16(-0.375)
    packed = np.zeros(12, np.uint8)
    packed[0:4] = (sc[:4] & 0x3F) | ((sc[4:] >> 4) << 6)
    packed[4:8] = (mn[:4] & 0x3F) | ((mn[4:] >> 4) << 6)
    packed[8:12] = (sc[4:] & 0x0F) | ((mn[4:] & 0x0F) << 4)
    got_sc, got_mn = q4_k_scale_min(packed)
    assert np.array_equal(got_sc, sc) and np.array_equal(got_mn, mn)
    qs = np.zeros((4, 32), np.uint8)
    for r in range(4):
        qs[r] = codes[2 * r] | (codes[2 * r + 1] << 4)
    raw = np.concatenate([np.array([d]).view(np.uint8), np.array([dmin]).view(np.uint8), packed, qs.reshape(-1)])
    m = gguf_int4_matrix(raw, "Q4_K", (1, 256))
    assert np.array_equal(m.q, codes.reshape(1, 256))
    scale = np.float32(d) * sc.astype(np.float32)
    dm = np.float32(dmin) * mn.astype(np.float32)
    want = scale[:, None] * codes - dm[:, None]
    assert np.array_equal(m.dequantize(), want.reshape(1, 256))


def test_q4_0_and_q4_1_nibble_order() -> None:
    codes = np.arange(32, dtype=np.uint8) % 16
    qs = codes[:16] | (codes[16:] << 4)
    d = np.array([np.float16(0.5)]).view(np.uint8)
    m0 = gguf_int4_matrix(np.concatenate([d, qs]), "Q4_0", (1, 32))
    assert np.array_equal(m0.q[0], codes)
    assert np.array_equal(m0.dequantize()[0], (codes.astype(np.float32) - 8) * 0.5)
    mn = np.array([np.float16(-1.25)]).view(np.uint8)
    m1 = gguf_int4_matrix(np.concatenate([d, mn, qs]), "Q4_1", (1, 32))
    assert np.array_equal(m1.dequantize()[0], codes.astype(np.float32) * 0.5 - 1.25)


def test_bad_inputs() -> None:
    with pytest.raises(QuantFormatError, match=r"'w'.*Q4_K rows of 288 weights are not whole blocks of 256"):
        gguf_int4_matrix(np.zeros(144, np.uint8), "Q4_K", (1, 288), "w")
    with pytest.raises(QuantFormatError, match=r"'w': 17 bytes of Q4_0 data do not hold a 1 x 32 matrix"):
        gguf_int4_matrix(np.zeros(17, np.uint8), "Q4_0", (1, 32), "w")
    with pytest.raises(QuantFormatError, match=r"'w': GGUF type Q6_K has no int4 form"):
        gguf_int4_matrix(np.zeros(210, np.uint8), "Q6_K", (1, 256), "w")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_q4_bytes_round_trip(qtype: str) -> None:
    raw = random_blocks(qtype, 8, 128, seed=5)
    m = gguf_int4_matrix(raw, qtype, (8, 128))
    assert np.array_equal(q4_bytes(m, qtype), raw)


def test_q4_bytes_refuses() -> None:
    m = quantize_int4(np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32), group=32)
    with pytest.raises(ValueError, match="Q4_0 bytes need a symmetric Int4Matrix with group 32"):
        q4_bytes(m, "Q4_0")
    with pytest.raises(ValueError, match="fp16 scales"):
        q4_bytes(m, "Q4_1")  # float32 scales of the quantizer are not fp16 values
