"""The NumPy reference executor against HF transformers (float32, eager attention, CPU).

Random weights from a fresh seed each run; the seed is printed (and ADA_MK_SEED=<n> replays it).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_util import hf_logits, hf_weights, random_hf_model  # noqa: E402

from ada_mk.config.model import ModelConfig, RopeScaling  # noqa: E402
from ada_mk.ir import ReferenceExecutor, build_decode_graph, rope_inv_freq  # noqa: E402
from ada_mk.ir.rope import rope_inv_freq_from  # noqa: E402

RTOL = 1e-4
N_DECODE = 16

MODELS = {
    # llama3 scaling with a short original context, so that it really changes the frequencies.
    "llama3-scaled": ModelConfig(
        "tiny-llama3", "llama", 64, 128, 2, 4, 2, 16, 256, 1e-5, 500000.0, 128,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 16)),
    # Linear RoPE scaling (positions divided by the factor), as Gemma 3's global layers use it.
    "llama-linear": ModelConfig(
        "tiny-llama-linear", "llama", 64, 128, 2, 4, 2, 16, 256, 1e-5, 10000.0, 128,
        rope_scaling=RopeScaling("linear", 4.0)),
    # Tied, MQA, and head_dim * heads != hidden_size.
    "llama-tied-mqa": ModelConfig(
        "tiny-llama-tied", "llama", 64, 96, 2, 4, 1, 32, 256, 1e-6, 10000.0, 128,
        tie_word_embeddings=True),
    "mistral": ModelConfig(
        "tiny-mistral", "mistral", 64, 128, 2, 8, 2, 8, 256, 1e-5, 1e6, 128),
    "qwen2-tied-bias": ModelConfig(
        "tiny-qwen2", "qwen2", 64, 128, 3, 4, 2, 16, 256, 1e-6, 1e6, 128,
        tie_word_embeddings=True, attention_bias=True),
    # Qwen3: per-head q/k RMSNorm before RoPE, head_dim * heads != hidden_size, tied (as 0.6B).
    "qwen3-tied-qknorm": ModelConfig(
        "tiny-qwen3", "qwen3", 64, 96, 3, 4, 2, 32, 256, 1e-6, 1e6, 128,
        tie_word_embeddings=True, qk_norm=True),
    "qwen3-untied": ModelConfig(
        "tiny-qwen3-8b", "qwen3", 96, 160, 2, 8, 2, 16, 256, 1e-6, 1e6, 128, qk_norm=True),
}


@pytest.fixture(scope="module")
def seed() -> int:
    s = int(os.environ.get("ADA_MK_SEED", np.random.default_rng().integers(2**31)))
    print(f"\n[test_reference_vs_hf] seed = {s}  (rerun with ADA_MK_SEED={s})")
    return s


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("family", list(MODELS))
def test_weight_names_and_rope_match_hf(family: str, seed: int) -> None:
    m = MODELS[family]
    hf = random_hf_model(m, seed)
    names = {t.name for t in build_decode_graph(m, None, batch=1).weights()}
    hf_names = set(hf.state_dict())
    if m.tie_word_embeddings:
        hf_names.discard("lm_head.weight")  # the same storage as the embedding
    assert names == hf_names
    hf_inv = hf.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(rope_inv_freq(m), hf_inv, rtol=1e-6)
    if m.rope_scaling is not None:  # the scaled case must differ from plain RoPE
        plain = rope_inv_freq_from(m.head_dim, m.rope_theta, None)
        assert np.abs(plain - hf_inv).max() > 1e-3


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("family", list(MODELS))
def test_decode_matches_hf(family: str, batch: int, seed: int) -> None:
    """Staggered sequences (continuous-batching style), so positions differ across the batch.

    Sequence b has a prompt of length lens[b] and joins at step starts[b] = max(lens) - lens[b],
    so all prompts end together and the N_DECODE greedy steps run at different positions.
    Before it joins, a slot runs garbage tokens at garbage positions, which the real sequence
    must overwrite or ignore (causal attention never looks past pos).
    """
    m = MODELS[family]
    rng = np.random.default_rng(seed + batch)
    hf = random_hf_model(m, seed)
    lens = rng.permutation([4, 7, 11])[:batch] if batch > 1 else np.array([6])
    prompts = [rng.integers(0, m.vocab_size, n) for n in lens]
    starts = lens.max() - lens
    steps = int(lens.max()) + N_DECODE
    ex = ReferenceExecutor(m, hf.state_dict(), batch=batch, max_context=steps + 1)  # torch in

    seqs = [list(p) for p in prompts]
    got: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for s in range(steps):
        toks, pos = np.zeros(batch, np.int64), np.zeros(batch, np.int64)
        for b in range(batch):
            p = s - starts[b]
            if p < 0:  # not joined yet: garbage
                toks[b], pos[b] = rng.integers(0, m.vocab_size), s
            else:
                toks[b], pos[b] = seqs[b][p], p
        logits = ex.step(toks, pos)
        assert logits.shape == (batch, m.vocab_size) and logits.dtype == np.float32
        for b in range(batch):
            p = s - starts[b]
            if p < 0:
                continue
            got[b].append(logits[b].copy())
            if p + 1 >= len(seqs[b]):  # past the prompt: greedy
                seqs[b].append(int(np.argmax(logits[b])))
        assert np.array_equal(ex.last_env["next_token"], np.argmax(logits, -1))

    for b in range(batch):
        ref = hf_logits(hf, seqs[b][: len(got[b])])
        assert len(got[b]) == lens[b] + N_DECODE
        errs = [rel_err(g, r) for g, r in zip(got[b], ref)]
        assert max(errs) <= RTOL, f"seq {b}: rel errs {np.round(errs, 7)} (seed {seed})"


def test_prefill_and_generate(seed: int) -> None:
    m = MODELS["llama3-scaled"]
    hf = random_hf_model(m, seed)
    rng = np.random.default_rng(seed + 7)
    prompt = rng.integers(0, m.vocab_size, (2, 5))
    ex = ReferenceExecutor(build_decode_graph(m, None, batch=2), hf_weights(hf), batch=2,
                           max_context=32)
    last = ex.prefill(prompt)
    for b in range(2):
        assert rel_err(last[b], hf_logits(hf, prompt[b])[-1]) <= RTOL
    n = 8
    out = ex.generate(prompt, n)
    assert out.shape == (2, n)
    for b in range(2):
        seq = np.concatenate([prompt[b], out[b]])
        ref = hf_logits(hf, seq)[len(prompt[b]) - 1: -1]  # the logits that chose out[b]
        for i in range(n):
            # Greedy under HF too, unless the top two are closer than float32 noise.
            top = ref[i].max()
            assert ref[i][out[b, i]] >= top - 1e-4 * max(1.0, abs(top)), (b, i, seed)
