"""The real SmolLM2-135M-Instruct Q4_1 GGUF packed natively for an int4 plan (group 32), on the CPU:
every Q4_1 matrix goes in as stored, the tied LM head as the GGUF's Q8_0 embedding (an int4 plan's
head streams int8), and the NumPy reference executor over the weights the kernel multiplies
(unpacked from that buffer) gives HF transformers' greedy tokens on the GGUF itself, for the three
prompts; the packed buffer is at most 0.6x the bf16 packing's bytes."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.ir.reference import ReferenceExecutor
from tests.smollm2_cases import N_NEW, PROMPTS, prompt_ids, reference_greedy
from tests.test_smollm2 import _one_thread, hf, hf_tokens, ours, path  # noqa: F401 - module fixtures

torch = pytest.importorskip("torch")


def test_int4_packing_keeps_hf_greedy_tokens(path, ours, hf_tokens) -> None:  # noqa: F811
    from ada_mk.checkpoints import load_checkpoint
    from ada_mk.checkpoints.pack import PackingSources
    from ada_mk.runtime.weights import pack_weights
    from ada_mk.runtime.weights_int4 import kernel_weights, unpack_int4
    from ada_mk.runtime.weights_q8 import dequantized_weights
    from ada_mk.search.layout import make_layout
    from tests.gpu.smollm2_kernels import smollm2_plan

    model, weights, tok = ours
    ck = load_checkpoint(path)
    plan = smollm2_plan(model, "H100", max_context=128, weights="int4")
    layout = make_layout(plan)
    src = PackingSources(weights, ck.quantized, layout, ck.int4)
    assert len(ck.int4) == 7 * model.num_hidden_layers  # every layer linear is Q4_1
    assert layout.weights.total_bytes <= 0.6 * make_layout(smollm2_plan(model, "H100", 128)).weights.total_bytes
    # the buffer holds the stored codes, and unpacks to the weights dequantized_weights gives
    packed = pack_weights(layout, src)
    seg, base = layout.weights.per_layer["wdown"], layout.weights.layer_base
    q, s, o = unpack_int4(packed, seg, base)
    assert np.array_equal(q, ck.int4["model.layers.0.mlp.down_proj.weight"].q)
    deq = dequantized_weights(layout, src)
    assert np.array_equal(kernel_weights(q, s, o, 32), deq["model.layers.0.mlp.down_proj.weight"])
    assert np.array_equal(deq["lm_head.weight"], weights["model.embed_tokens.weight"])  # Q8_0 as stored
    ex = ReferenceExecutor(model, {k: np.asarray(v, np.float32) for k, v in deq.items()}, batch=1, max_context=128)
    for (text, chat), want in zip(PROMPTS, hf_tokens):
        assert reference_greedy(ex, prompt_ids(tok, text, chat), N_NEW) == want, text
