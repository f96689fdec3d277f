"""Qwen3 (dense) through the pipeline on the CPU: its HF config.json read as transformers reads it
(and its unsupported fields refused in one line), the q/k head-norm weights in the packed layout
where the kernel reads them, and the torch prefill over the packed weights against HF
transformers' Qwen3ForCausalLM."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ada_mk.codegen.render import render
from ada_mk.config import ConfigError, load_config
from ada_mk.runtime.weights import bf16_bits_to_float, pack_weights, to_bf16_bits
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = {p.stem: p for p in sorted((ROOT / "configs").glob("qwen3-*.json"))}


def test_published_configs_are_shipped() -> None:
    assert set(QWEN3) == {"qwen3-0.6b", "qwen3-8b"}


@pytest.mark.parametrize("name", list(QWEN3))
def test_published_config_reads_as_transformers_reads_it(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    m, d = load_config(QWEN3[name])
    hf = transformers.Qwen3Config(**{k: v for k, v in json.loads(QWEN3[name].read_text()).items()
                                     if k not in ("architectures", "torch_dtype", "transformers_version")})
    assert m.name == name and m.model_type == "qwen3" and m.qk_norm and not m.attention_bias
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(m, key) == getattr(hf, key), key
    assert m.rope_theta == hf.rope_parameters["rope_theta"] and m.rope_scaling is None
    assert m.head_dim * m.num_attention_heads != m.hidden_size or name == "qwen3-8b"  # 0.6B: 16 x 128 vs 1024
    assert m.to_dict()["qk_norm"] is True


def test_defaults_follow_qwen3config(tmp_path: Path) -> None:
    """Absent head_dim and num_key_value_heads take Qwen3Config's defaults (128, 32), not
    hidden / heads."""
    transformers = pytest.importorskip("transformers")
    data = {"model_type": "qwen3", "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2,
            "num_attention_heads": 32, "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(data))
    m, _ = load_config(tmp_path / "config.json")
    hf = transformers.Qwen3Config(**{k: v for k, v in data.items() if k != "model_type"})
    assert (m.head_dim, m.num_key_value_heads, m.max_position_embeddings) == \
        (hf.head_dim, hf.num_key_value_heads, hf.max_position_embeddings)


@pytest.mark.parametrize("change,field", [
    ({"attention_bias": True}, "attention_bias"),  # HF Qwen3 would bias o_proj too
    ({"use_sliding_window": True, "sliding_window": 1024}, "sliding_window"),  # shorter than max_context
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, "rope_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_fields_are_one_line_errors(tmp_path: Path, change: dict, field: str) -> None:
    data = {**json.loads(QWEN3["qwen3-0.6b"].read_text()), **change}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=field) as e:
        load_config(tmp_path / "config.json", max_context=4096)
    assert "\n" not in str(e.value)


def test_llama_plans_carry_no_new_fields() -> None:
    m, _ = load_config(ROOT / "configs" / "llama3.2-1b.yaml")
    assert "qk_norm" not in m.to_dict() and not m.qk_norm


def tiny_qwen3(gpu: str, batch: int):
    m, d = load_config(QWEN3["qwen3-0.6b"], gpu=gpu, batch=batch, max_context=64)
    m = dataclasses.replace(m, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=128, vocab_size=320, name="tiny-qwen3")
    return m, d


@pytest.mark.parametrize("gpu,batch", [("L20", 1), ("H100", 4)])
def test_qk_norm_weights_where_the_kernel_reads_them(gpu: str, batch: int) -> None:
    """Segment qk_norm of every layer holds q_norm then k_norm (bf16), and the kernel's
    Weights::QK_NORM is its offset."""
    m, d = tiny_qwen3(gpu, batch)
    plan = make_plan(m, d)
    lay = make_layout(plan)
    seg = lay.weights.per_layer["qk_norm"]
    rng = np.random.default_rng()
    from ada_mk.checkpoints.names import expected_weights

    w = {n: rng.standard_normal(s).astype(np.float32) for n, s in expected_weights(m).items()}
    packed = pack_weights(lay, w)
    for layer in range(m.num_hidden_layers):
        base = lay.weights.layer_base + layer * lay.weights.layer_stride + seg.offset
        p = f"model.layers.{layer}.self_attn."
        want = np.concatenate([to_bf16_bits(w[p + "q_norm.weight"]), to_bf16_bits(w[p + "k_norm.weight"])])
        assert (packed[base: base + 2 * m.head_dim] == want).all()
    cu = render(plan).files[f"{plan.file_stem}.cu"]
    assert f"static constexpr size_t QK_NORM = {seg.offset};" in cu
    assert "q/k head RMSNorm" in cu


@pytest.mark.parametrize("gpu,batch", [("L20", 1), ("H100", 4)])
def test_torch_prefill_over_packed_weights_matches_hf(gpu: str, batch: int) -> None:
    """adamk-run's hybrid prefill (torch over the packed buffer, q/k head norms included) gives
    HF Qwen3ForCausalLM's logits; HF's weights are bf16 values so both read the same numbers."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ada_mk.runtime.hybrid import torch_prefill
    from tests.hf_util import hf_logits, hf_weights, random_hf_model

    m, d = tiny_qwen3(gpu, batch)
    hf = random_hf_model(m, seed=int(np.random.default_rng().integers(1 << 30)))
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    lay = make_layout(make_plan(m, d))
    packed = pack_weights(lay, hf_weights(hf))
    wbuf = torch.from_numpy(bf16_bits_to_float(packed)).to(torch.bfloat16)
    ids = np.random.default_rng().integers(0, m.vocab_size, size=(1, 9))
    got = torch_prefill(m, lay.weights, wbuf, torch.from_numpy(ids)).numpy()[0]
    want = hf_logits(hf, ids[0])[-1]
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)
    # Without the head norms the logits are far off: the check above sees them.
    plain = torch_prefill(dataclasses.replace(m, qk_norm=False), lay.weights, wbuf, torch.from_numpy(ids)).numpy()[0]
    assert np.linalg.norm(plain - want) > 1e-2 * np.linalg.norm(want)
