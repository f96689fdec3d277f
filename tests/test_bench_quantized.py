"""adamk-bench's 8-bit baselines on the CPU (compile-int8, compile-fp8): the torch quantizer against
ada_mk.quant's rule bit for bit, the weight-only linear against a float reference, the quantized
gpt-fast-style decoder against HF transformers run on the dequantized weights, bytes per step in
each format, the tables, and the whole CLI run with those systems. No timings are asserted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ada_mk.bench.report import (DEFAULT_SYSTEMS, SYSTEMS, Row, floors, markdown_table, step_bytes,
                                 system_weights)
from ada_mk.config import ModelConfig, load_config
from tests.test_bench import TINY_YAML

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch():
    t = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return t


# ------------------------------------------------------------------------------- the rounding rule


def _weights(torch, n: int = 48, k: int = 96):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(n, k, generator=gen) * torch.logspace(-4, 1, n)[:, None]  # rows of every magnitude
    w[0] = 0  # a zero row: scale 0, dequantizes to zeros
    w[1, :4] = torch.tensor([127.0, 63.5, -0.5, 1.5])  # int8 ties (scale 1): round half to even
    w[2, :3] = torch.tensor([448.0, 1.0, -3e-3])  # fp8 subnormals in the row of amax 448
    return w


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_quantize_rows_is_ada_mk_quant_bit_for_bit(torch, fmt):
    from ada_mk.bench.quantized import dequantize_rows, quantize_rows
    from ada_mk.quant import quantize_fp8, quantize_int8

    w = _weights(torch)
    for src in (w, w.to(torch.bfloat16)):  # the harness quantizes the bf16 HF weights
        q, scales = quantize_rows(src, fmt)
        a = src.float().numpy()
        ref = quantize_int8(a, group=a.shape[1]) if fmt == "int8" else quantize_fp8(a)
        assert q.dtype == (torch.int8 if fmt == "int8" else torch.float8_e4m3fn) and scales.dtype == torch.float32
        assert np.array_equal(q.view(torch.uint8).numpy(), ref.q)
        assert np.array_equal(scales.numpy(), ref.scales[:, 0])
        assert np.array_equal(dequantize_rows(q, scales).numpy(), ref.dequantize())
    q, scales = quantize_rows(w, fmt)
    assert scales[0] == 0 and not q[0].float().any()
    if fmt == "int8":
        assert q[1, :4].tolist() == [127, 64, 0, 2]  # 63.5 -> 64, -0.5 -> -0, 1.5 -> 2
        assert int(q.min()) >= -127
    else:
        assert scales[2] == 1 and q[2, 2].float() == torch.tensor(-3e-3).to(torch.float8_e4m3fn).float()
    # Round to nearest: the error is at most half a step (int8) or half an E4M3 ulp (fp8) of each row.
    err = (dequantize_rows(q, scales) - w).abs()
    bound = scales[:, None] * (0.5 if fmt == "int8" else 16.0)  # 448's ulp is 32
    assert (err <= bound + 1e-12).all()


def test_quantize_rows_bad_inputs(torch):
    from ada_mk.bench.quantized import quantize_rows

    with pytest.raises(ValueError, match="format"):
        quantize_rows(torch.ones(2, 2), "int4")
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(torch.ones(4), "int8")
    with pytest.raises(ValueError, match="NaN"):
        quantize_rows(torch.tensor([[1.0, float("nan")]]), "fp8")


# ------------------------------------------------------------------------------- the linear module


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_weight_only_linear_matches_a_float_reference(torch, fmt):
    from ada_mk.bench.quantized import WeightOnlyLinear, dequantize_rows, linear, quantize_rows

    w = _weights(torch)[3:]
    mod = WeightOnlyLinear.quantize(w, fmt)
    assert mod.fmt == fmt and mod.weight.element_size() == 1 and fmt in repr(mod)
    wd = dequantize_rows(*quantize_rows(w, fmt))
    x = torch.randn(3, 1, w.shape[1], generator=torch.Generator().manual_seed(2))
    ref = x @ wd.T
    y = mod(x)
    assert y.dtype == torch.float32 and y.shape == (3, 1, w.shape[0])
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6 * ref.abs().max())
    b = torch.randn(w.shape[0])
    assert torch.allclose(linear(x, mod, b), ref + b, rtol=1e-5, atol=1e-6 * ref.abs().max())
    assert torch.equal(linear(x, wd, b), torch.nn.functional.linear(x, wd, b))
    # bf16 activations: the weight converts exactly, the product is a bf16 matmul of the same function.
    yb = mod(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    assert ((yb.float() - ref).norm() / ref.norm()) < 1e-2


def test_weight_only_linear_bad_inputs(torch):
    from ada_mk.bench.quantized import WeightOnlyLinear

    with pytest.raises(ValueError, match="int8 or float8"):
        WeightOnlyLinear(torch.ones(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="scales"):
        WeightOnlyLinear(torch.ones(2, 2, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="scales"):
        WeightOnlyLinear(torch.ones(2, 2, dtype=torch.int8), torch.ones(2, dtype=torch.bfloat16))


# ------------------------------------------------------------------------------- the quantized decoder


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=256, rms_norm_eps=1e-5, max_position_embeddings=1024)
TINY_MODELS = {
    "qwen2-bias-tied": ModelConfig(name="tiny-qwen2", model_type="qwen2", rope_theta=1e6, attention_bias=True,
                                   tie_word_embeddings=True, **TINY),
    "llama-untied": ModelConfig(name="tiny-llama", model_type="llama", rope_theta=1e4, **TINY),
}
STEPS = 4


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_quantized_decoder_matches_hf_on_the_dequantized_weights(torch, kind, fmt):
    """Decode steps from position 0 (flex and SDPA): the 8-bit decoder's logits equal HF's full
    forward once HF holds the dequantized weights, and differ from HF's on the original weights by
    far more (the check compares like with like). HF's embedding stays the original (a tied head is
    untied), as the decoder's does."""
    from ada_mk.bench import baselines as bl
    from ada_mk.bench.quantized import WeightOnlyLinear, load_dequantized

    m = TINY_MODELS[kind]
    hf = bl.random_hf_model(m, device="cpu", dtype=torch.float32, seed=3, attn_implementation="eager")
    tokens = torch.randint(0, m.vocab_size, (2, STEPS), generator=torch.Generator().manual_seed(5))
    embed0 = hf.model.embed_tokens.weight.detach().clone()
    with torch.no_grad():
        original = hf(input_ids=tokens, use_cache=False).logits
        decs = {a: bl.GptFastDecoder(m, bl.hf_weights(hf), batch=2, max_seq=128, attention=a, weights_format=fmt)
                for a in ("flex", "sdpa")}
        load_dequantized(hf, decs["flex"])
        ref = hf(input_ids=tokens, use_cache=False).logits
        for attention, dec in decs.items():
            assert isinstance(dec.head, WeightOnlyLinear) and isinstance(dec.layers[1].w2, WeightOnlyLinear)
            assert dec.embed.dtype == torch.float32 and torch.equal(dec.embed, embed0)
            for t in range(STEPS):
                _, logits = bl.decode_one_token(dec, tokens[:, t:t + 1], torch.tensor([t]))
                assert bl.rel_err(logits, ref[:, t]) < 1e-4, (kind, fmt, attention, t)
                assert bl.rel_err(logits, original[:, t]) > 1e-3
    assert torch.equal(hf.model.embed_tokens.weight, embed0)
    assert torch.equal(hf.lm_head.weight, decs["flex"].head.dequantized())
    if m.attention_bias:
        assert decs["flex"].layers[0].bqkv is not None
    with pytest.raises(ValueError, match="weights_format"):
        bl.GptFastDecoder(m, bl.hf_weights(hf), batch=2, max_seq=128, weights_format="nf4")


def test_load_dequantized_needs_a_quantized_decoder(torch):
    from ada_mk.bench import baselines as bl
    from ada_mk.bench.quantized import load_dequantized

    m = TINY_MODELS["llama-untied"]
    hf = bl.random_hf_model(m, device="cpu", dtype=torch.float32, seed=3, attn_implementation="eager")
    with pytest.raises(TypeError, match="not quantized"):
        load_dequantized(hf, bl.GptFastDecoder(m, bl.hf_weights(hf), batch=1, max_seq=128))
    dec = bl.GptFastDecoder(m, bl.hf_weights(hf), batch=1, max_seq=128, weights_format="int8")
    load_dequantized(hf, dec)  # outside no_grad too: HF's parameters require grad
    assert torch.equal(hf.model.layers[1].mlp.down_proj.weight, dec.layers[1].w2.dequantized())


# ------------------------------------------------------------------------------- bytes per step


def _expected_8bit(m: ModelConfig, batch: int, context: int, scale: int = 4) -> tuple[int, int]:
    H, I, V = m.hidden_size, m.intermediate_size, m.vocab_size
    rows = m.q_size + 2 * m.kv_size + H + 2 * I + H  # output rows of q|k|v, o, gate|up, down
    per_layer = (m.q_size + 2 * m.kv_size) * H + H * m.q_size + 3 * I * H + scale * rows + 2 * 2 * H
    if m.attention_bias:
        per_layer += 2 * (m.q_size + 2 * m.kv_size)
    w = m.num_hidden_layers * per_layer + 2 * H + V * H + scale * V + 2 * batch * H  # norm, head, embedding rows
    kv = 2 * m.num_hidden_layers * batch * m.num_key_value_heads * context * m.head_dim * 2
    return w, kv


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("config,batch,context", [("llama3-8b", 1, 512), ("llama3.2-1b", 4, 4096),
                                                  ("qwen2.5-0.5b", 8, 1024)])
def test_step_bytes_8bit(config, batch, context, fmt):
    m, _ = load_config(ROOT / "configs" / f"{config}.yaml")
    b = step_bytes(m, batch, context, fmt)
    w, kv = _expected_8bit(m, batch, context)
    assert (b.weights, b.kv, b.total) == (w, kv, w + kv)
    assert step_bytes(m, batch, context, fmt, scale_bytes=2).weights < b.weights  # bf16 scales
    bf16 = step_bytes(m, batch, context)
    assert bf16.kv == b.kv and 0.45 < b.weights / bf16.weights < 0.55


def test_step_bytes_8bit_llama3_8b_and_bad_format():
    """../shared/BRIEF.md: about 7.5 GB a token for Llama-3-8B with 8-bit weights and LM head."""
    m, _ = load_config(ROOT / "configs" / "llama3-8b.yaml")
    assert round(step_bytes(m, 1, 512, "int8").weights / 1e9, 2) == 7.51
    with pytest.raises(ValueError, match="weights format"):
        step_bytes(m, 1, 512, "nf4")
    # int4 (compile-int4): half a byte a weight plus a 4-byte scale and zero per 128 columns
    assert 3.98e9 < step_bytes(m, 1, 512, "int4").weights < 4.02e9


# ------------------------------------------------------------------------------- report


def test_systems_and_tables():
    assert set(DEFAULT_SYSTEMS) == {"megakernel", "compile-flex", "compile-sdpa", "eager"}  # 8-bit: opt-in
    assert {"compile-int8", "compile-fp8"} <= set(SYSTEMS)
    assert [system_weights(s) for s in ("compile-flex", "compile-int8", "compile-fp8")] == ["bf16", "int8", "fp8"]
    kw = dict(config="llama3-8b", batch=1, context=512, read_gbs=3000.0, layers=32)
    rows = [Row(system="compile-fp8", ms=4.0, bytes_per_step=7_500_000_000, weights="fp8", **kw),
            Row(system="compile-flex", ms=6.0, bytes_per_step=15_000_000_000, **kw),
            Row(system="compile-int8", ms=3.5, bytes_per_step=7_500_000_000, weights="int8", **kw),
            Row(system="eager", ms=30.0, bytes_per_step=15_000_000_000, **kw)]
    assert [(label, r.bytes_per_step) for label, r in floors(rows)] == [
        ("floor: bytes / read bandwidth", 15_000_000_000),
        ("floor, int8/fp8 weights: bytes / read bandwidth", 7_500_000_000)]
    body = markdown_table(rows).splitlines()[2:]
    cells = [line.split(" | ") for line in body]
    assert [c[3] for c in cells] == [
        "torch.compile + flex_attention", "torch.compile + flex_attention, int8 weights",
        "torch.compile + flex_attention, fp8 weights", "HF transformers eager (sdpa)",
        "floor: bytes / read bandwidth", "floor, int8/fp8 weights: bytes / read bandwidth"]
    assert cells[1][6:10] == ["2,143", "71.4", "31.2", "1.71x"]  # (3.5 - 2.5) ms / 32 layers
    assert cells[4][4] == "5.000" and cells[5][4] == "2.500"
    assert Row(config="x", batch=1, context=1, system="compile-int8", weights="int8").to_json()["weights"] == "int8"


def test_plot_with_8bit_floors(tmp_path):
    pytest.importorskip("matplotlib")
    from ada_mk.bench.report import plot

    kw = dict(config="llama3-8b", batch=1, read_gbs=3000.0, layers=32)
    rows = [Row(context=c, system=s, ms=ms, bytes_per_step=b, weights=f, **kw)
            for c in (512, 4096) for s, ms, b, f in (("compile-flex", 6.0, 15e9, "bf16"),
                                                     ("compile-int8", 3.5, 7.5e9, "int8"))]
    pngs = plot(rows, tmp_path, "NVIDIA H100 80GB HBM3")
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------- the whole run


def test_whole_run_with_the_8bit_baselines_on_the_cpu(torch, tmp_path):
    """adamk-bench --systems compile-flex,compile-int8,compile-fp8 with --device cpu (aot_eager):
    every system passes its logits check (the 8-bit ones against HF on their dequantized weights,
    after compile-flex passed against the original ones), is timed, and counts its own bytes."""
    from ada_mk.cli.bench import main

    cfg = tmp_path / "tiny-bench.yaml"
    cfg.write_text(TINY_YAML)
    rc = main(["--config", str(cfg), "--batch", "2", "--context", "16,40", "--steps", "2", "--windows", "1",
               "--warmup", "0", "--device", "cpu", "--compile-backend", "aot_eager", "--bw-gb", "0.01",
               "--systems", "compile-flex,compile-int8,compile-fp8",
               "--results", str(tmp_path / "RESULTS.md"), "--plot-dir", str(tmp_path / "plots"),
               "--out-json", str(tmp_path / "r.json"), "--seed", "3"], standalone_mode=False)
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["system"], r["context"]): r for r in data["results"]}
    assert set(rows) == {(s, c) for s in ("compile-flex", "compile-int8", "compile-fp8") for c in (16, 40)}
    m, _ = load_config(cfg)
    for (system, c), r in rows.items():
        assert not r["error"], r["error"]
        assert r["ms"] > 0 and r["check_rel_err"] < 3e-2 and r["cache_len"] == 128
        assert r["weights"] == system_weights(system)
        assert r["bytes_per_step"] == step_bytes(m, 2, c, r["weights"]).total
    assert rows[("compile-int8", 16)]["bytes_per_step"] < rows[("compile-flex", 16)]["bytes_per_step"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| tiny-bench | 2 | 40 | torch.compile + flex_attention, fp8 weights |" in text
    assert "| tiny-bench | 2 | 40 | floor, int8/fp8 weights: bytes / read bandwidth |" in text


# ------------------------------------------------------------------------------- the MegaKernel's 8-bit rows


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4"])
@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_megakernel_reference_is_hf_on_the_packed_weights(torch, kind, fmt):
    """The 8-bit MegaKernel rows' check: HF's logits on the weights dequantized from the kernel's
    own packed buffer, given to HF for one call; those are what packing quantized (the packer's
    dequantized_weights), HF's parameters are left as they were, and bf16 plans use HF as it is."""
    import dataclasses

    from ada_mk.bench import baselines as bl
    from ada_mk.bench.harness import megakernel_reference
    from ada_mk.bench.quantized import packed_hf_weights
    from ada_mk.config import DeployConfig
    from ada_mk.config.deploy import DEFAULT_GROUPS
    from ada_mk.config.gpus import lookup_gpu
    from ada_mk.runtime.weights import pack_weights_torch
    from ada_mk.runtime.weights_q8 import dequantized_weights
    from ada_mk.search.layout import make_layout
    from ada_mk.search.planner import make_plan

    m = dataclasses.replace(TINY_MODELS[kind], hidden_size=128, intermediate_size=256, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=64)  # heads the kernel's attention takes
    hf = bl.random_hf_model(m, device="cpu", dtype=torch.float32, seed=int(torch.randint(0, 1000, ())),
                            attn_implementation="eager")
    weights = bl.hf_weights(hf)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    tokens = torch.randint(0, m.vocab_size, (2, STEPS))
    deploy = DeployConfig(gpu=lookup_gpu("H100"), batch=2, max_context=64, weights=fmt, weights_group=DEFAULT_GROUPS[fmt])
    layout = make_layout(make_plan(m, deploy))
    packed = pack_weights_torch(layout, weights)
    got = packed_hf_weights(hf, layout, packed)
    want = dequantized_weights(layout, weights)
    linears = [n for n in want if n.endswith("proj.weight")] + ["lm_head.weight"]
    assert set(got) == set(linears)
    for n in linears:
        assert torch.equal(got[n], want[n].to(torch.float32)), n
    ref = megakernel_reference(hf, layout, packed, tokens)
    for n, p in hf.named_parameters():
        assert torch.equal(p, before[n]), n  # HF itself unchanged
    with torch.no_grad():
        for n in linears:
            if n == "lm_head.weight":
                hf.lm_head.weight = torch.nn.Parameter(got[n])  # untied
            else:
                hf.get_parameter(n).copy_(got[n])
        assert bl.rel_err(ref, hf(input_ids=tokens, use_cache=False).logits) < 1e-6
    bf16 = make_layout(make_plan(m, dataclasses.replace(deploy, weights="bf16", weights_group=0)))
    assert packed_hf_weights(hf, bf16, pack_weights_torch(bf16, weights)) == {}
