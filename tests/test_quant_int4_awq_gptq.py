"""AWQ (GEMM) and GPTQ (v1 / v2) 4-bit tensors read into Int4Matrix: tensors hand-packed here by an
independent encoder in each layout's documented order, the codes and zero points recovered, and
dequantize() equal to AutoAWQ's / AutoGPTQ's formula (exact in float32, and their fp16 result bit
for bit once rounded to fp16); the quantization_config checks; bad tensors."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.quant import (AWQ_ORDER, Int4Scheme, QuantFormatError, awq_matrix, gptq_matrix, int4_matrix, int4_scheme,
                          unpack_nibbles)

torch = pytest.importorskip("torch")

AWQ_CFG = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
GPTQ_CFG = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False,
            "checkpoint_format": "gptq"}


def pack_words(codes: np.ndarray, axis: int, order: tuple[int, ...]) -> np.ndarray:
    """Independent encoder: int32 words holding 8 codes each along `axis`, nibble i of word j being
    code 8 j + order[i] (Python integers, one word at a time)."""
    c = np.moveaxis(np.asarray(codes, np.int64), axis, -1)
    rows, m = c.reshape(-1, c.shape[-1]).shape
    flat = c.reshape(-1, m)
    out = np.zeros((rows, m // 8), np.uint32)
    for r in range(rows):
        for j in range(m // 8):
            word = 0
            for i in range(8):
                word |= int(flat[r, 8 * j + order[i]]) << (4 * i)
            out[r, j] = word
    out = out.reshape(*c.shape[:-1], m // 8).view(np.int32)
    return np.moveaxis(out, -1, axis)


def random_case(k: int, n: int, g: int, seed: int, zmin: int = 0, zmax: int = 15):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (k, n))          # [in, out]
    z = rng.integers(zmin, zmax + 1, (k // g, n))
    s = (rng.standard_normal((k // g, n)) * 0.01).astype(np.float16)
    return q, z, s


def fp16_reference(q: np.ndarray, z: np.ndarray, s: np.ndarray, g: int) -> np.ndarray:
    """AutoAWQ / AutoGPTQ dequantization, in torch fp16: (iweight - izeros) * scales, [in, out]."""
    iw = torch.from_numpy(q.astype(np.int32))
    iz = torch.from_numpy(np.repeat(z, g, axis=0).astype(np.int32))
    sc = torch.from_numpy(np.repeat(s, g, axis=0))
    return ((iw - iz) * sc).numpy()


def check(m, q: np.ndarray, z: np.ndarray, s: np.ndarray, g: int) -> None:
    assert m.shape == (q.shape[1], q.shape[0]) and m.group == g
    assert np.array_equal(m.q, q.T)
    deq = m.dequantize()
    exact = (q - np.repeat(z, g, axis=0)).astype(np.float64) * np.repeat(s, g, axis=0).astype(np.float64)
    assert np.array_equal(deq.astype(np.float64), exact.T)  # exact in float32
    assert np.array_equal(deq.astype(np.float16), fp16_reference(q, z, s, g).T)


def test_unpack_nibbles_orders() -> None:
    codes = np.arange(16, dtype=np.int64).reshape(1, 16) % 16
    for order in (AWQ_ORDER, tuple(range(8))):
        assert np.array_equal(unpack_nibbles(pack_words(codes, 1, order), order), codes)
    # AWQ's documented word for columns 0..7 = 0..7: nibbles hold 0, 2, 4, 6, 1, 3, 5, 7
    assert pack_words(np.arange(8).reshape(1, 8), 1, AWQ_ORDER)[0, 0] == 0x75316420


@pytest.mark.parametrize("g", [32, 64])
def test_awq(g: int) -> None:
    k, n = 128, 48
    q, z, s = random_case(k, n, g, seed=g)
    scheme = int4_scheme({**AWQ_CFG, "group_size": g})
    m = awq_matrix(pack_words(q, 1, AWQ_ORDER), pack_words(z, 1, AWQ_ORDER), s, scheme, "model.layers.0.mlp.up_proj")
    assert not m.symmetric
    check(m, q, z, s, g)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_asymmetric(fmt: str) -> None:
    k, n, g = 128, 40, 32
    q, z, s = random_case(k, n, g, seed=5, zmin=1)  # v1 cannot store a zero point of 0
    stored = z - 1 if fmt == "gptq" else z
    scheme = int4_scheme({**GPTQ_CFG, "checkpoint_format": fmt})
    g_idx = (np.arange(k) // g).astype(np.int32)
    m = gptq_matrix(pack_words(q, 0, tuple(range(8))), pack_words(stored, 1, tuple(range(8))), s, g_idx, scheme, "x")
    check(m, q, z, s, g)


def test_gptq_symmetric_and_per_column() -> None:
    k, n = 64, 16
    q, _, s = random_case(k, n, k, seed=9)
    z = np.full((1, n), 8)
    scheme = int4_scheme({**GPTQ_CFG, "sym": True, "group_size": -1})
    tensors = {"p.qweight": pack_words(q, 0, tuple(range(8))), "p.qzeros": pack_words(z - 1, 1, tuple(range(8))),
               "p.scales": s, "p.g_idx": np.zeros(k, np.int32)}
    m = int4_matrix(tensors, "p", scheme)
    assert m.symmetric and m.group == k
    check(m, q, z, s, k)


def test_act_order_refused() -> None:
    k, n, g = 64, 8, 32
    q, z, s = random_case(k, n, g, seed=2, zmin=1)
    scheme = int4_scheme(GPTQ_CFG)
    g_idx = np.random.default_rng(0).permutation(np.arange(k) // g).astype(np.int32)
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.g_idx' is not i // group_size \(32\): an act-order"):
        gptq_matrix(pack_words(q, 0, tuple(range(8))), pack_words(z - 1, 1, tuple(range(8))), s, g_idx, scheme, "l")


def test_bad_tensors() -> None:
    k, n, g = 64, 16, 32
    q, z, s = random_case(k, n, g, seed=4, zmin=1)
    awq = int4_scheme(AWQ_CFG)
    qw, qz = pack_words(q, 1, AWQ_ORDER), pack_words(z, 1, AWQ_ORDER)
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.qzeros' has shape \[1, 2\]; expected \[2, 2\]$"):
        awq_matrix(qw, qz[:1], s, awq, "l")
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.qweight' has dtype float32; expected int32$"):
        awq_matrix(qw.astype(np.float32), qz, s, awq, "l")
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.scales' holds NaN or infinity$"):
        awq_matrix(qw, qz, np.full_like(s, np.inf), awq, "l")
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.qzeros' is missing"):
        int4_matrix({"l.qweight": qw, "l.scales": s}, "l", awq)
    v1 = int4_scheme(GPTQ_CFG)
    gw = pack_words(q, 0, tuple(range(8)))
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.qzeros' holds a stored zero of 15"):
        gptq_matrix(gw, pack_words(np.full_like(z, 15), 1, tuple(range(8))), s, None, v1, "l")
    sym = int4_scheme({**GPTQ_CFG, "sym": True})
    with pytest.raises(QuantFormatError, match=r"^tensor 'l.qzeros' holds zero points other than 8"):
        gptq_matrix(gw, pack_words(z - 1, 1, tuple(range(8))), s, None, sym, "l")


@pytest.mark.parametrize("qc, field", [
    ({**AWQ_CFG, "bits": 8}, "bits"),
    ({**GPTQ_CFG, "bits": 3}, "bits"),
    ({**AWQ_CFG, "version": "gemv"}, "version"),
    ({**AWQ_CFG, "zero_point": False}, "zero_point"),
    ({**AWQ_CFG, "group_size": -1}, "group_size"),
    ({**GPTQ_CFG, "group_size": 0}, "group_size"),
    ({**GPTQ_CFG, "checkpoint_format": "marlin"}, "checkpoint_format"),
    ({**GPTQ_CFG, "sym": "yes"}, "sym"),
    ({"quant_method": "bitsandbytes"}, "quant_method"),
])
def test_config_refused(qc: dict, field: str) -> None:
    with pytest.raises(QuantFormatError, match=rf"^quantization_config\.{field} = [^\n]*$"):
        int4_scheme(qc)


def test_config_accepted() -> None:
    assert int4_scheme(AWQ_CFG) == Int4Scheme("awq", 32, False, False)
    assert int4_scheme({**AWQ_CFG, "version": "GEMM"}).method == "awq"
    assert int4_scheme(GPTQ_CFG) == Int4Scheme("gptq", 32, False, True)
    assert int4_scheme({**GPTQ_CFG, "checkpoint_format": "gptq_v2", "sym": True}) == Int4Scheme("gptq", 32, True, False)
    assert int4_scheme({k: v for k, v in GPTQ_CFG.items() if k != "checkpoint_format"}).zeros_minus_one
