"""Quantized weights (FP8 E4M3, int8, int4) in the MegaKernel against HF transformers on the GPU,
with fresh random weights every run: the kernel streams each linear weight quantized (round to
nearest, per row or per group), HF runs the same quantized weights dequantized (8-bit: W = value x
scale, in bf16; int4: the kernel's own bf16(q * bf16(scale) + bf16(offset))), and the checks are
test_megakernel's: logits within relative error 2e-2 of HF at every decode step, greedy agreement
with a float32 forward of those dequantized weights on every clear step."""
from __future__ import annotations

import gc

import pytest

from .kernels import INT4_CASES, Q8_CASES, kernel_for
from .test_megakernel import _decode_and_compare, _seed

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")

_models: dict = {}


def quantized_hf_model(config: str, weights: str, group: int):
    """(HF model, 8-bit sources by HF name): a random bf16 HF model of `config` whose linear
    weights (and LM head, untied) are replaced by their quantized values dequantized, and the
    quantized matrices the kernel streams. One model is kept at a time."""
    from ada_mk.bench.baselines import random_hf_model
    from ada_mk.quant.torch_quant import quantize_fp8_torch, quantize_int8_torch

    from .kernels import model_for

    key = (config, weights, group)
    if key in _models:
        return _models[key]
    _models.clear()
    gc.collect()
    torch.cuda.empty_cache()
    m, _ = model_for(config, "H100", 1, None)
    hf = random_hf_model(m, seed=_seed(), attn_implementation="sdpa")
    quantize = quantize_fp8_torch if weights == "fp8" else quantize_int8_torch
    sources = {}
    with torch.no_grad():
        names = [f"model.layers.{i}.{x}.weight" for i in range(m.num_hidden_layers) for x in LINEARS]
        for name in names:
            p = hf.get_parameter(name)
            sources[name] = q = quantize(p.detach(), group or None)
            p.copy_(q.dequantize().to(p.dtype))
        # The LM head streams 8-bit too; a tied one from the bf16 embedding, which stays as it is.
        head = hf.lm_head.weight
        q = quantize(head.detach(), group or None)
        if not m.tie_word_embeddings:
            sources["lm_head.weight"] = q
        hf.lm_head.weight = torch.nn.Parameter(q.dequantize().to(head.dtype))
        hf.config.tie_word_embeddings = False
    _models[key] = hf, sources
    return _models[key]


def int4_hf_model(config: str, group: int, symmetric: bool):
    """(HF model, sources by HF name): a random bf16 HF model of `config` whose layers' linear weights
    are quantized to int4 (round to nearest at `group`, asymmetric or Q4_0's symmetric rule) and
    replaced by the weights the kernel multiplies, its LM head (untied) by int8 at group 32, and the
    Int4Tensors / QuantizedTensor the kernel streams. One model is kept at a time."""
    from ada_mk.bench.baselines import random_hf_model
    from ada_mk.quant.int4_torch import quantize_int4_torch
    from ada_mk.quant.torch_quant import quantize_int8_torch
    from ada_mk.runtime.weights_int4 import kernel_weights

    from .kernels import model_for

    key = (config, "int4", group, symmetric)
    if key in _models:
        return _models[key]
    _models.clear()
    gc.collect()
    torch.cuda.empty_cache()
    m, _ = model_for(config, "H100", 1, None)
    hf = random_hf_model(m, seed=_seed(), attn_implementation="sdpa")

    def kernel_matrix(q) -> torch.Tensor:
        offsets = q.offsets if q.offsets is not None else q.scales * -8.0
        bf = lambda t: t.to(torch.bfloat16).double()  # noqa: E731  (the pairs as the chunk stores them)
        return kernel_weights(q.q, bf(q.scales), bf(offsets), q.group)

    sources = {}
    with torch.no_grad():
        names = [f"model.layers.{i}.{x}.weight" for i in range(m.num_hidden_layers) for x in LINEARS]
        for name in names:
            p = hf.get_parameter(name)
            sources[name] = q = quantize_int4_torch(p.detach(), group, symmetric=symmetric)
            p.copy_(kernel_matrix(q).to(p.dtype))
        # An int4 plan's LM head streams int8 with a scale per 32 columns (config.deploy.stage_format);
        # a tied one is quantized on load from the bf16 embedding, which stays as it is.
        head = hf.lm_head.weight
        q = quantize_int8_torch(head.detach(), 32)
        if not m.tie_word_embeddings:
            sources["lm_head.weight"] = q
        hf.lm_head.weight = torch.nn.Parameter(q.dequantize().to(head.dtype))
        hf.config.tie_word_embeddings = False
    _models[key] = hf, sources
    return _models[key]


def _engine(config: str, gpu: str, batch: int, weights: str, hf, sources, group: int | None = None):
    from ada_mk.runtime.engine import MegaKernelEngine

    plan, art = kernel_for(config, gpu, batch, weights=weights, weights_group=group)
    eng = MegaKernelEngine(plan, art.fatbin)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight" or not plan.model.tie_word_embeddings}
    state.update(sources)
    eng.load_weights(state)
    return eng


@pytest.mark.parametrize("config,gpu,batch,weights", Q8_CASES, ids=[f"{c}-{g}-bs{b}-{w}" for c, g, b, w in Q8_CASES])
def test_8bit_logits_match_hf(config, gpu, batch, weights):
    from .kernels import model_for

    _, deploy = model_for(config, gpu, batch, None, weights=weights)
    hf, sources = quantized_hf_model(config, weights, deploy.weights_group)
    for _ in range(3):  # as test_logits_match_hf: another prompt where no step was clear
        clear = _decode_and_compare(hf, config, gpu, batch, 100,
                                    make_engine=lambda: _engine(config, gpu, batch, weights, hf, sources))
        if clear:
            break
    assert clear > 0, "no step with a clear top-2 margin in three random prompts"


@pytest.mark.parametrize("config,gpu,batch,group,symmetric", INT4_CASES,
                         ids=[f"{c}-{g}-bs{b}-int4g{gr}{'s' if s else ''}" for c, g, b, gr, s in INT4_CASES])
def test_int4_logits_match_hf(config, gpu, batch, group, symmetric):
    hf, sources = int4_hf_model(config, group, symmetric)
    for _ in range(3):
        clear = _decode_and_compare(hf, config, gpu, batch, 100,
                                    make_engine=lambda: _engine(config, gpu, batch, "int4", hf, sources, group))
        if clear:
            break
    assert clear > 0, "no step with a clear top-2 margin in three random prompts"
