"""Gemma 3 (text): the NumPy reference executor against HF transformers' Gemma3ForCausalLM
(float32, eager attention, CPU), and the reading of its HF config.json.

Random weights from a fresh seed each run (ADA_MK_SEED=<n> replays it). The sliding window is a
few positions, so the decode steps run well past it on the local layers.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_util import hf_logits, random_hf_model  # noqa: E402

from ada_mk.config import ConfigError, load_config  # noqa: E402
from ada_mk.config.model import ModelConfig, RopeScaling  # noqa: E402
from ada_mk.ir import ReferenceExecutor, build_decode_graph  # noqa: E402
from ada_mk.ir.build import embed_scale  # noqa: E402
from ada_mk.ir.rope import rope_inv_freq_from  # noqa: E402

RTOL = 1e-4
GEMMA = dict(qk_norm=True, norm_offset=1.0, sandwich_norm=True, embed_scale=True, hidden_act="gelu_tanh",
             rope_local_theta=10000.0)

MODELS = {
    # Every 3rd layer global (as sliding_window_pattern does), window 5, linear RoPE scaling on
    # the global layers (as Gemma-3-4B), query_pre_attn_scalar unlike head_dim, tied.
    "gemma3-linear": ModelConfig(
        "tiny-gemma3", "gemma3_text", 64, 96, 4, 4, 2, 32, 256, 1e-6, 1e6, 128, tie_word_embeddings=True,
        rope_scaling=RopeScaling("linear", 8.0), query_pre_attn_scalar=24.0, sliding_window=5,
        layer_types=("sliding_attention", "sliding_attention", "full_attention", "sliding_attention"), **GEMMA),
    # The final logit softcapping, MQA, untied, a local layer last.
    "gemma3-softcap": ModelConfig(
        "tiny-gemma3-cap", "gemma3_text", 64, 128, 3, 4, 1, 16, 256, 1e-6, 1e6, 128,
        query_pre_attn_scalar=16.0, sliding_window=4, final_logit_softcapping=3.0,
        layer_types=("full_attention", "sliding_attention", "sliding_attention"), **GEMMA),
}


@pytest.fixture(scope="module")
def seed() -> int:
    s = int(os.environ.get("ADA_MK_SEED", np.random.default_rng().integers(2**31)))
    print(f"\n[test_reference_gemma3] seed = {s}  (rerun with ADA_MK_SEED={s})")
    return s


def gemma_hf_model(m: ModelConfig, seed: int):
    """A random float32 Gemma3ForCausalLM. Its embedding scale is set to sqrt(hidden) rounded to
    bf16, the value HF multiplies by when the model runs in bf16 (a float32 HF model keeps the
    exact root), which is what the IR takes."""
    import torch

    hf = random_hf_model(m, seed)
    with torch.no_grad():
        hf.model.embed_tokens.embed_scale.fill_(embed_scale(m))
    return hf


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("family", list(MODELS))
def test_weight_names_and_rope_match_hf(family: str, seed: int) -> None:
    m = MODELS[family]
    hf = gemma_hf_model(m, seed)
    names = {t.name for t in build_decode_graph(m, None, batch=1).weights()}
    hf_names = set(hf.state_dict())
    if m.tie_word_embeddings:
        hf_names.discard("lm_head.weight")
    assert names == hf_names
    rot = hf.model.rotary_emb
    np.testing.assert_allclose(rope_inv_freq_from(m.head_dim, m.rope_theta, m.rope_scaling),
                               rot.full_attention_inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(rope_inv_freq_from(m.head_dim, m.rope_local_theta, None),
                               rot.sliding_attention_inv_freq.numpy(), rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("family", list(MODELS))
def test_decode_matches_hf(family: str, batch: int, seed: int) -> None:
    """Prompts of different lengths decoded side by side, then greedy steps, at positions up to
    five times the window; every step's logits against HF's recomputation of the sequence."""
    m = MODELS[family]
    rng = np.random.default_rng(seed + batch)
    hf = gemma_hf_model(m, seed)
    lens = [9, 4][:batch]
    steps = 24
    ex = ReferenceExecutor(m, hf.state_dict(), batch=batch, max_context=max(lens) + steps)
    seqs = [list(rng.integers(0, m.vocab_size, n)) for n in lens]
    got: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for s in range(max(lens) + steps - 1):
        toks = np.array([seqs[b][s] if s < len(seqs[b]) else 0 for b in range(batch)])
        logits = ex.step(toks, np.full(batch, s))
        for b in range(batch):
            got[b].append(logits[b].copy())
            if s + 1 >= len(seqs[b]):
                seqs[b].append(int(np.argmax(logits[b])))
    assert len(seqs[0]) > 4 * m.sliding_window
    for b in range(batch):
        ref = hf_logits(hf, seqs[b][: len(got[b])])
        errs = [rel_err(g, r) for g, r in zip(got[b], ref)]
        assert max(errs) <= RTOL, f"seq {b}: rel errs {np.round(errs, 7)} (seed {seed})"


def test_window_matters(seed: int) -> None:
    """Past the window, the sliding layers really drop the old positions: with the window
    widened the logits differ (so the test above could fail on a window bug)."""
    import dataclasses

    m = MODELS["gemma3-linear"]
    hf = gemma_hf_model(m, seed)
    toks = np.random.default_rng(seed).integers(0, m.vocab_size, 16)
    wide = dataclasses.replace(m, sliding_window=64)
    outs = []
    for model in (m, wide):
        ex = ReferenceExecutor(model, hf.state_dict(), batch=1, max_context=16)
        outs.append(ex.prefill(toks[None])[0])
    assert rel_err(outs[0], outs[1]) > 1e-3


# Gemma-3-1B-it's text config and Gemma-3-4B-it's multimodal one, as published (the fields that
# shape the network).
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152, "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": True, "vocab_size": 262144,
}
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
}


def test_reads_published_configs(tmp_path) -> None:
    """Our reading agrees with transformers' own Gemma3TextConfig (defaults included)."""
    from transformers import AutoConfig

    for name, data in (("gemma-3-1b", GEMMA3_1B), ("gemma-3-4b", GEMMA3_4B)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(data))
        m, _ = load_config(folder / "config.json", max_context=4096)
        hf = AutoConfig.from_pretrained(folder)
        hf = getattr(hf, "text_config", hf)
        assert m.name == name and m.model_type == "gemma3_text"
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "vocab_size", "sliding_window", "query_pre_attn_scalar",
                    "final_logit_softcapping", "tie_word_embeddings"):
            assert getattr(m, key) == getattr(hf, key), (name, key)
        assert list(m.layer_types) == list(hf.layer_types)
        assert m.rope_theta == hf.rope_parameters["full_attention"]["rope_theta"]
        assert m.rope_local_theta == hf.rope_parameters["sliding_attention"]["rope_theta"]
        want = hf.rope_parameters["full_attention"]
        assert (m.rope_scaling.factor if m.rope_scaling else None) == want.get("factor"), name


def test_gemma3_config_errors(tmp_path) -> None:
    bad = {**GEMMA3_1B, "hidden_activation": "gelu"}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="hidden_activation"):
        load_config(p)
    p.write_text(json.dumps({**GEMMA3_1B, "layer_types": ["full_attention"]}))
    with pytest.raises(ConfigError, match="layer_types"):
        load_config(p)
    p.write_text(json.dumps({**GEMMA3_1B, "attn_logit_softcapping": 50.0}))
    with pytest.raises(ConfigError, match="attn_logit_softcapping"):
        load_config(p)


def test_adamk_gen_refuses_gemma3_in_one_line(tmp_path) -> None:
    """The reference executor runs Gemma 3; the kernel does not yet, and adamk-gen says so."""
    from click.testing import CliRunner

    from ada_mk.cli.gen import main

    folder = tmp_path / "gemma-3-1b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(GEMMA3_1B))
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    r = runner.invoke(main, ["--config", str(folder / "config.json"), "--no-build", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("adamk-gen: error: ") and "does not support it yet" in lines[-1]
    assert "sliding_window" in lines[-1] and "Traceback" not in r.stderr
