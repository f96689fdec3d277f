"""GGUF Q8_0 tensors handed out as stored: int8 QuantizedMatrix with the blocks' fp16 scales per 32
columns, parsed from the raw bytes (Q and K rows un-permuted), equal to the float path; other
GGUF types keep loading dequantized."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import load_checkpoint
from ada_mk.checkpoints.gguf_file import permute_qk, unpermute_qk
from ada_mk.config import ModelConfig
from tests.gguf_util import stored, write_gguf
from tests.test_checkpoints_gguf import random_weights

gguf = pytest.importorskip("gguf")

TINY = ModelConfig(name="tiny-1m", model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=300, rms_norm_eps=1e-5,
                   rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
QTYPES = {"q_proj.weight": "Q8_0", "k_proj.weight": "Q8_0", "v_proj.weight": "Q4_0", "o_proj.weight": "Q8_0",
          "gate_proj.weight": "Q8_0", "up_proj.weight": "F16", "down_proj.weight": "Q8_0", "lm_head.weight": "Q8_0"}


def blocks_by_hand(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values [N, K], fp16 scales as float32 [N, K / 32]) of gguf's own Q8_0 bytes for `a`."""
    raw = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0).reshape(a.shape[0], -1, 34)
    d = raw[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    q = raw[:, :, 2:].copy().view(np.int8).reshape(a.shape)
    return q, d


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_read_as_stored(tmp_path: Path, arch: str) -> None:
    model = TINY if arch == "llama" else ModelConfig(**{**TINY.__dict__, "model_type": "qwen2",
                                                         "attention_bias": True})
    w = random_weights(model, seed=4)
    path = write_gguf(tmp_path / "tiny.gguf", model, w, QTYPES)
    ck = load_checkpoint(path)
    q8 = {n for n in w if any(n.endswith(s) for s, t in QTYPES.items() if t == "Q8_0")}
    assert set(ck.quantized) == q8 and len(q8) == 2 * 5 + 1
    for name in q8:
        m = ck.quantized[name]
        assert m.fmt == "int8" and m.group == 32 and m.shape == w[name].shape
        heads = None
        if arch == "llama" and name.endswith("q_proj.weight"):
            heads = model.num_attention_heads
        elif arch == "llama" and name.endswith("k_proj.weight"):
            heads = model.num_key_value_heads
        a = w[name] if heads is None else permute_qk(w[name], heads)
        q, d = blocks_by_hand(a)
        if heads is not None:
            q, d = unpermute_qk(q, heads), unpermute_qk(d, heads)
        assert np.array_equal(m.q.view(np.int8), q) and np.array_equal(m.scales, d)
        deq = m.dequantize()
        assert np.array_equal(deq, q.astype(np.float32) * np.repeat(d, 32, axis=1))  # W = d x q
        assert np.array_equal(ck.weights[name], deq)
        want = stored(a, "Q8_0")  # gguf's own float dequantization agrees
        assert np.array_equal(deq, want if heads is None else unpermute_qk(want, heads))
    for name in set(w) - q8:  # other types: dequantized as before
        assert name not in ck.quantized
        assert ck.weights[name].dtype == np.float32 and ck.weights[name].shape == w[name].shape
