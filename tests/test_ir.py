"""The decode-step IR: structure, names and the bytes/FLOPs it accounts for."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ada_mk.config.deploy import DeployConfig
from ada_mk.config.gpus import GpuSpec
from ada_mk.config.model import ModelConfig, RopeScaling
from ada_mk.ir import Graph, build_decode_graph

LLAMA3_8B = ModelConfig(
    name="Llama-3-8B", model_type="llama", hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192)
LLAMA32_1B = ModelConfig(
    name="Llama-3.2-1B", model_type="llama", hidden_size=2048, intermediate_size=8192,
    num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
    vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
    tie_word_embeddings=True,
    rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192))


def gpu() -> GpuSpec:
    try:
        from ada_mk.config.gpus import GPUS

        return GPUS["H100"]
    except (ImportError, KeyError):
        return GpuSpec(name="H100", arch="sm_90", sms=132, smem_per_block=227 * 1024,
                       smem_per_sm=228 * 1024, regs_per_sm=65536, l2_bytes=50 * 2**20,
                       mem_bandwidth=3.35e12, read_bandwidth=3.0e12, cp_async=True, tma=True)


def deploy(batch: int = 1) -> DeployConfig:
    return DeployConfig(gpu=gpu(), batch=batch, max_context=4096)


# Published "bytes read per token" at a 512-token context, bf16, batch 1 (decimal GB).
@pytest.mark.parametrize("model,published_gb", [(LLAMA3_8B, 15.01), (LLAMA32_1B, 2.47)])
def test_bytes_per_step_match_published_table(model: ModelConfig, published_gb: float) -> None:
    g = build_decode_graph(model, deploy(1), context=512)
    # The table is the weights a step reads: every matrix once, the embedding lookup only
    # B rows (so an untied model does not pay for its embedding matrix, and a tied one pays for
    # it once, in the LM head). It matches to ~0.01%.
    assert g.weight_bytes() == pytest.approx(published_gb * 1e9, rel=1e-3)
    # Everything moved, KV cache (512 positions read, 1 written) and activations included,
    # stays within 1% of the table.
    assert g.total_bytes() == pytest.approx(published_gb * 1e9, rel=1e-2)
    m = model
    kv_read = m.num_hidden_layers * 2 * m.num_key_value_heads * 512 * m.head_dim * 2
    kv_written = m.num_hidden_layers * 2 * m.kv_size * 2
    assert g.kv_bytes() == kv_read + kv_written


def test_tied_head_reads_embedding_once() -> None:
    g = build_decode_graph(LLAMA32_1B, deploy(2), context=512)
    assert "lm_head.weight" not in g.tensors
    head = g.ops[-2]
    assert head.name == "lm_head" and head.inputs[1] == "model.embed_tokens.weight"
    names = [t.name for t in g.weights()]
    assert names.count("model.embed_tokens.weight") == 1
    # The lookup reads B rows; the head reads all V rows.
    emb = g.tensors["model.embed_tokens.weight"]
    assert g.ops[0].reads()[1][1] == 2 * 2048 * 2
    assert head.bytes_read() == emb.nbytes + 2 * 2048 * 2


def test_structure_and_names() -> None:
    m, L = LLAMA3_8B, LLAMA3_8B.num_hidden_layers
    g = build_decode_graph(m, deploy(4), context=512)
    assert len(g.ops) == 15 * L + 4
    kinds = [op.kind for op in g.ops]
    assert kinds[0] == "Embedding" and kinds[-3:] == ["RMSNorm", "Linear", "Argmax"]
    assert kinds.count("Linear") == 7 * L + 1
    assert kinds.count("DecodeAttention") == kinds.count("KVAppend") == kinds.count("Rope") == L
    assert kinds.count("RMSNorm") == 2 * L + 1
    assert [op.name for op in g.layer_ops(3)][:3] == ["L3.attn_norm", "L3.q_proj", "L3.k_proj"]
    assert len(g.layer_ops(3)) == 15
    names = {t.name for t in g.weights()}
    assert len(names) == 9 * L + 3
    for i in (0, L - 1):
        for s in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                  "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj"):
            assert f"model.layers.{i}.{s}.weight" in names
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names
    assert g.tensors["model.layers.0.self_attn.k_proj.weight"].shape == (1024, 4096)
    assert g.tensors["L3.q"].shape == (4, 4096) and g.tensors["L3.attn_out"].shape == (4, 4096)
    assert g.tensors["logits"].shape == (4, 128256) and g.tensors["next_token"].shape == (4,)
    # Every op input is produced before it is used (or is a weight / input / cache).
    produced = {n for n, t in g.tensors.items() if t.role in ("weight", "input")}
    for op in g.ops:
        assert set(op.inputs) <= produced, op.name
        produced |= set(op.outputs)


def test_qkv_bias() -> None:
    m = ModelConfig("q", "qwen2", 896, 4864, 2, 14, 2, 64, 151936, 1e-6, 1e6, 32768,
                    tie_word_embeddings=True, attention_bias=True)
    g = build_decode_graph(m, deploy(1))
    names = {t.name for t in g.weights()}
    assert len(names) == 9 * 2 + 2 + 3 * 2
    assert "model.layers.1.self_attn.v_proj.bias" in names
    assert "model.layers.1.self_attn.o_proj.bias" not in names


def test_costs_scale_with_context_and_batch() -> None:
    m = LLAMA3_8B
    g1, g2 = build_decode_graph(m, deploy(1), 512), build_decode_graph(m, deploy(1), 1024)
    per_pos = m.num_hidden_layers * 2 * m.kv_size * 2
    assert g2.kv_bytes() - g1.kv_bytes() == 512 * per_pos
    g8 = build_decode_graph(m, deploy(8), 512)
    # Weights are shared by the batch: only the embedding lookup reads more rows.
    assert g8.weight_bytes() - g1.weight_bytes() == 7 * m.hidden_size * 2
    assert g8.kv_bytes() == pytest.approx(8 * g1.kv_bytes())
    # At batch 1 a decode step is ~2 FLOPs per parameter (plus attention).
    params = sum(t.numel for t in g1.weights())
    assert g1.total_flops() == pytest.approx(2 * (params - m.vocab_size * m.hidden_size), rel=0.02)


def test_dump_and_json() -> None:
    g = build_decode_graph(LLAMA32_1B, deploy(1), 512)
    text = g.dump()
    lines = text.splitlines()
    assert len(lines) == len(g.ops) + 5
    assert "L3.q_proj" in text and "DecodeAttention" in text and "128256x2048" in text
    assert lines[-1].startswith("total:") and "GB per step" in lines[-1]
    j = g.to_json()
    assert json.loads(json.dumps(j)) == j
    assert len(j["ops"]) == len(g.ops) and j["totals"]["bytes"] == g.total_bytes()
    rope = next(o for o in j["ops"] if o["kind"] == "Rope")
    assert rope["attrs"]["scaling"]["rope_type"] == "llama3"


@settings(max_examples=40, deadline=None)
@given(layers=st.integers(1, 4), kv=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2, 4]),
       d=st.sampled_from([16, 64, 128]), tied=st.booleans(), bias=st.booleans(),
       batch=st.integers(1, 8), context=st.integers(1, 4096))
def test_byte_accounting_identity(layers, kv, group, d, tied, bias, batch, context) -> None:
    """weight bytes = all weights, minus the embedding rows a step does not look up (untied)."""
    m = ModelConfig("x", "qwen2" if bias else "llama", 256, 512, layers, kv * group, kv, d, 1000,
                    1e-6, 1e4, 4096, tie_word_embeddings=tied, attention_bias=bias)
    g: Graph = build_decode_graph(m, deploy(batch), context)
    all_w = sum(t.nbytes for t in g.weights())
    rows = batch * 256 * 2
    assert g.weight_bytes() == all_w + rows - (0 if tied else 1000 * 256 * 2)
    assert g.kv_bytes() == layers * 2 * batch * kv * d * 2 * (context + 1)
    assert g.total_bytes() == sum(g.bytes_by_role().values())


@pytest.mark.parametrize("theta, head_dim", [(500000.0, 64), (500000.0, 128), (10000.0, 64), (1000000.0, 128)])
def test_rope_powers_are_correctly_rounded(theta: float, head_dim: int) -> None:
    """The generated kernels bake inv_freq into their source: its values must not depend on the
    CPU's SIMD path (numpy's float32 power differs by an ulp between AVX2 and AVX-512 machines).
    Oracle: the power in 40-digit decimal arithmetic, rounded to float32, then HF's float32 division."""
    from decimal import Decimal, getcontext

    import numpy as np

    from ada_mk.ir.rope import rope_inv_freq_from

    getcontext().prec = 40
    got = rope_inv_freq_from(head_dim, theta, None)
    for i, e in enumerate(np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)):
        power = np.float32(float(Decimal(float(np.float32(theta))) ** Decimal(float(e))))
        assert got[i] == np.float32(1.0) / power, (i, float(got[i]))
