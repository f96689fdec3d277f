"""The compile-int4 baseline's linear (ada_mk/bench/int4_linear.py): gpt-fast's int4 rounding,
torch's tinygemm kernels (their CPU twins here) computing W = (q - 8) * scale + zero against a
float reference, `dequantized` as what the module computes, the gpt-fast-style decoder in int4
against HF transformers on those weights, and shapes tinygemm refuses."""
from __future__ import annotations


import numpy as np
import pytest

from ada_mk.config import ModelConfig

torch = pytest.importorskip("torch")
if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
    pytest.skip("this torch has no CPU tinygemm", allow_module_level=True)


def _reference(w: np.ndarray):
    """gpt-fast's group_quantize_tensor in float64 NumPy (scales and zeros rounded to bf16 as it
    stores them): (q, W = (q - 8) * scale + zero)."""
    n, k = w.shape
    g = w.astype(np.float64).reshape(n, k // 128, 128)
    lo, hi = g.min(2), g.max(2)
    bf = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(torch.bfloat16).double().numpy()  # noqa: E731
    scales = bf(np.maximum(hi - lo, 1e-6) / 15)
    zeros = bf(lo.astype(np.float32) + scales.astype(np.float32) * 8)
    q = np.clip(np.rint((g - (zeros - 8 * scales)[..., None]) / scales[..., None]), 0, 15)
    return q.reshape(n, k), ((q - 8) * scales[..., None] + zeros[..., None]).reshape(n, k)


def test_rounding_and_matmul_against_a_float_reference() -> None:
    from ada_mk.bench.int4_linear import Int4WeightOnlyLinear, quantize_groups

    n, k = 48, 384
    w = torch.randn(n, k) * 0.05
    q, scales, zeros = quantize_groups(w)
    rq, rw = _reference(w.numpy())
    assert (np.abs(q.numpy() - rq) <= 1).all() and (q.numpy() == rq).mean() > 0.99  # float32 vs float64 ties
    lin = Int4WeightOnlyLinear(q, scales, zeros)
    x = torch.randn(5, k)
    want = x.double() @ torch.from_numpy(rw).T
    got = lin(x).double()
    assert ((got - want).norm() / want.norm()) < 1e-2
    deq = lin.dequantized().double()
    exact = (q.double() - 8).reshape(n, -1, 128) * scales.double()[..., None] + zeros.double()[..., None]
    exact = exact.reshape(n, k)
    assert (deq - exact).abs().max() <= 2 ** -7 * exact.abs().max()
    assert (w.double() - exact).abs().max() <= 0.6 * scales.double().max() + 1e-6  # within half a step (and bf16)


def test_decoder_in_int4_matches_hf_on_its_weights() -> None:
    from ada_mk.bench import baselines as bl
    from ada_mk.bench.int4_linear import Int4WeightOnlyLinear
    from ada_mk.bench.quantized import load_dequantized

    m = ModelConfig(name="tiny-int4", model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=256, rms_norm_eps=1e-5,
                    rope_theta=1e4, max_position_embeddings=1024, tie_word_embeddings=True)
    hf = bl.random_hf_model(m, device="cpu", dtype=torch.float32, seed=int(torch.randint(0, 1000, ())),
                            attn_implementation="eager")
    tokens = torch.randint(0, m.vocab_size, (2, 4))
    with torch.no_grad():
        original = hf(input_ids=tokens, use_cache=False).logits
        dec = bl.GptFastDecoder(m, bl.hf_weights(hf), batch=2, max_seq=128, attention="flex", weights_format="int4")
        assert isinstance(dec.head, Int4WeightOnlyLinear) and isinstance(dec.layers[0].wqkv, Int4WeightOnlyLinear)
        load_dequantized(hf, dec)
        ref = hf(input_ids=tokens, use_cache=False).logits
        for t in range(4):
            _, logits = bl.decode_one_token(dec, tokens[:, t:t + 1], torch.tensor([t]))
            # tinygemm takes bf16 activations: within bf16 noise of HF on the same weights
            assert bl.rel_err(logits, ref[:, t]) < 2e-2, t
            assert bl.rel_err(logits, ref[:, t]) < 0.5 * bl.rel_err(original[:, t], ref[:, t])


def test_shapes_tinygemm_refuses() -> None:
    from ada_mk.bench.int4_linear import Int4WeightOnlyLinear

    with pytest.raises(ValueError, match=r"int4 weight-only \(tinygemm\): a \[64, 576\] matrix needs K a multiple"):
        Int4WeightOnlyLinear.quantize(torch.randn(64, 576))
    with pytest.raises(ValueError, match="N a multiple of 8"):
        Int4WeightOnlyLinear.quantize(torch.randn(9, 128))
    with pytest.raises(ValueError, match="NaN"):
        Int4WeightOnlyLinear.quantize(torch.full((8, 128), float("nan")))
