"""8-bit weights packed into the device layout (docs/quantized-weights.md, "The packed chunk"):
the layout's 8-bit segments, numpy and torch packing byte for byte, the kernel's per-chunk math
over the packed bytes against dequantize() @ x, the reader, 8-bit sources, and bad inputs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ada_mk.config import load_config
from ada_mk.quant import QuantizedMatrix, quantize_fp8, quantize_int8
from ada_mk.runtime.weights import pack_weights
from ada_mk.runtime.weights_q8 import dequantized_weights, unpack_quantized
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan
from tests.q8_kernel_model import kernel_matvec

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("qkv", "o", "gate_up", "down", "lm_head")


def tiny_plan(batch: int, vocab: int = 328, tied: bool = True):
    m, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu="H100", batch=batch, max_context=64)
    m = dataclasses.replace(m, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, vocab_size=vocab, tie_word_embeddings=tied,
                            name="tiny-q8")
    return make_plan(m, d)


def q8_plan(batch: int, fmt: str, group: int, cuts: dict[str, tuple[int, int, int]], tied: bool = True):
    """A bf16 plan with every linear stage made 8-bit: cuts[kind] = (rows, ksplit, warps_per_row)."""
    plan = tiny_plan(batch, tied=tied)
    tilings = {}
    for kind, t in plan.tilings.items():
        rows, ks, wpr = cuts[kind]
        nt = dataclasses.replace(t, rows=rows, ksplit=ks, warps_per_row=wpr, tiled=True, weights=fmt, group=group)
        assert nt.whole_column_blocks and nt.rows % nt.chunk_rows == 0, (kind, nt)
        tilings[kind] = nt
    return dataclasses.replace(plan, tilings=tilings)


# (batch, format, group, cuts): batched (bs 4) and rows (bs 1) tilings; K-splits; several chunks
# across a row (kparts); last tiles with padding rows (o: 256 rows in tiles of 48 or 12; the LM
# head: 328 rows); chunks of 64 columns (no swizzle) and of 128 / 256 (swizzled).
CASES = {
    "fp8-row-batched": (4, "fp8", 0, {"qkv": (16, 2, 1), "o": (48, 1, 2), "gate_up": (32, 1, 4),
                                      "down": (16, 2, 1), "lm_head": (32, 1, 1)}),
    "fp8-g128-batched": (4, "fp8", 128, {"qkv": (16, 2, 1), "o": (48, 1, 2), "gate_up": (32, 1, 2),
                                         "down": (32, 2, 2), "lm_head": (16, 1, 2)}),
    "int8-g32-batched": (4, "int8", 32, {"qkv": (32, 1, 4), "o": (48, 2, 2), "gate_up": (16, 1, 2),
                                         "down": (16, 1, 8), "lm_head": (32, 2, 1)}),
    "int8-g32-rows": (1, "int8", 32, {"qkv": (8, 2, 1), "o": (12, 1, 2), "gate_up": (16, 1, 4),
                                      "down": (8, 2, 1), "lm_head": (16, 1, 1)}),
    "fp8-row-rows": (1, "fp8", 0, {"qkv": (8, 1, 1), "o": (12, 2, 2), "gate_up": (8, 1, 8),
                                   "down": (16, 4, 2), "lm_head": (24, 1, 1)}),
    "fp8-g128-rows": (1, "fp8", 128, {"qkv": (8, 2, 1), "o": (12, 1, 2), "gate_up": (16, 1, 4),
                                      "down": (8, 1, 1), "lm_head": (8, 2, 1)}),
}


def random_weights(plan, rng) -> dict[str, np.ndarray]:
    """HF-named float32 weights of the plan's model, with an all-zero row in some matrices."""
    m = plan.model
    H, I, V = m.hidden_size, m.intermediate_size, m.vocab_size
    w = {"model.embed_tokens.weight": rng.standard_normal((V, H)).astype(np.float32),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)}
    if not m.tie_word_embeddings:
        w["lm_head.weight"] = rng.standard_normal((V, H)).astype(np.float32)
    for i in range(m.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (m.q_size, H), "self_attn.k_proj": (m.kv_size, H),
                  "self_attn.v_proj": (m.kv_size, H), "self_attn.o_proj": (H, m.q_size),
                  "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
        for name, shape in shapes.items():
            a = (rng.standard_normal(shape) * rng.uniform(0.01, 1.0, (shape[0], 1))).astype(np.float32)
            a[rng.integers(shape[0])] = 0  # a zero row: scale 0, codes 0
            w[p + name + ".weight"] = a
        if m.attention_bias:
            for x, n in (("q", m.q_size), ("k", m.kv_size), ("v", m.kv_size)):
                w[p + f"self_attn.{x}_proj.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    return w


def quantize(w: np.ndarray, fmt: str, group: int) -> QuantizedMatrix:
    return quantize_fp8(w, group or None) if fmt == "fp8" else quantize_int8(w, group or None)


def stage_matrix(plan, seg_name: str, layer: int, w: dict, fmt: str, group: int) -> QuantizedMatrix:
    """The stage's quantized [N, K] matrix built by hand: sources quantized one by one, then
    concatenated (q|k|v) or interleaved (gate/up) row by row."""
    p = f"model.layers.{layer}."
    if seg_name == "lm_head":
        src = "model.embed_tokens.weight" if plan.model.tie_word_embeddings else "lm_head.weight"
        return quantize(w[src], fmt, group)
    names = {"wqkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "wo": ["self_attn.o_proj"],
             "wgate_up": ["mlp.gate_proj", "mlp.up_proj"], "wdown": ["mlp.down_proj"]}[seg_name]
    ms = [quantize(w[p + n + ".weight"], fmt, group) for n in names]
    if seg_name == "wgate_up":
        q = np.stack([ms[0].q, ms[1].q], 1).reshape(-1, ms[0].q.shape[1])
        s = np.stack([ms[0].scales, ms[1].scales], 1).reshape(-1, ms[0].scales.shape[1])
    else:
        q, s = np.concatenate([x.q for x in ms]), np.concatenate([x.scales for x in ms])
    return QuantizedMatrix(q, s, fmt, ms[0].group)


SEGS = {"wqkv": "qkv", "wo": "o", "wgate_up": "gate_up", "wdown": "down", "lm_head": "lm_head"}


def stage_segments(lay):
    w = lay.weights
    yield w.globals_["lm_head"], 0, 0
    for layer in range(w.layers):
        for name in ("wqkv", "wo", "wgate_up", "wdown"):
            yield w.per_layer[name], layer, w.layer_base + layer * w.layer_stride


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_chunks_compute_dequantize_times_x(case):
    """For each 8-bit segment: the kernel's per-chunk math over the packed bytes equals
    dequantize() @ x, the reader gives back the quantizer's codes and scales, padding rows hold
    zero values and zero scales; torch packs the same bytes; bf16 segments are untouched."""
    batch, fmt, group, cuts = CASES[case]
    plan = q8_plan(batch, fmt, group, cuts)
    lay = make_layout(plan)
    rng = np.random.default_rng()
    w = random_weights(plan, rng)
    packed = pack_weights(lay, w)
    assert packed.dtype == np.uint16 and packed.size == lay.weights.total
    buf = packed.view(np.uint8)
    for seg, layer, base in stage_segments(lay):
        t = plan.tilings[SEGS[seg.name]]
        assert seg.linear == t and seg.tiling == () and seg.weights == fmt
        assert 2 * seg.size == t.tasks * t.chunks * t.chunk_bytes
        want = stage_matrix(plan, seg.name, layer, w, fmt, group)
        got = unpack_quantized(packed, seg, base)
        assert got.group == want.group and (got.q == want.q).all() and (got.scales == want.scales).all(), seg.name
        seg_bytes = buf[2 * (base + seg.offset): 2 * (base + seg.offset + seg.size)]
        exact = want.values().astype(np.float64) * np.repeat(want.scales.astype(np.float64), want.group, axis=1)
        for _ in range(2):
            x = rng.standard_normal(t.k)
            y = kernel_matvec(seg_bytes, t, x)
            ref = exact @ x  # value x scale without dequantize()'s float32 rounding
            assert np.allclose(y, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max()), (seg.name, np.abs(y - ref).max())
            ref = want.dequantize().astype(np.float64) @ x
            assert np.allclose(y, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max()), (seg.name, np.abs(y - ref).max())
    # the embedding and the norms stay bf16, as a bf16 plan packs them
    from ada_mk.runtime.weights import to_bf16_bits

    emb = lay.weights.globals_["embed"]
    assert (packed[emb.offset: emb.offset + emb.size] == to_bf16_bits(w["model.embed_tokens.weight"]).reshape(-1)).all()
    assert lay.weights.globals_["lm_head"].offset != emb.offset  # a tied 8-bit head gets its own segment

    tw = {k: torch.from_numpy(v) for k, v in w.items()}
    from ada_mk.runtime.weights import pack_weights_torch

    tp = pack_weights_torch(lay, tw, device="cpu")
    assert tp.dtype == torch.bfloat16 and (tp.view(torch.int16).numpy().view(np.uint16) == packed).all()
    # torch bf16 sources (as a GPU load has them) quantize alike on both paths
    bw = {k: v.to(torch.bfloat16) for k, v in tw.items()}
    assert (pack_weights_torch(lay, bw).view(torch.int16).numpy().view(np.uint16) == pack_weights(lay, bw)).all()


def test_padding_rows_and_bytes_are_zero():
    """int8: a padding row is value 0 (stored 0x80) with scale 0; the bytes after the scales are 0."""
    plan = q8_plan(1, "int8", 32, CASES["int8-g32-rows"][3])
    lay = make_layout(plan)
    w = random_weights(plan, np.random.default_rng())
    packed = pack_weights(lay, w)
    seg = lay.weights.per_layer["wo"]
    t = seg.linear
    assert t.tiles * t.rows > t.n  # 256 rows in tiles of 12
    from ada_mk.runtime.weights_q8 import unpack_chunks

    base = lay.weights.layer_base
    codes, sc = unpack_chunks(packed.view(np.uint8)[2 * (base + seg.offset): 2 * (base + seg.offset + seg.size)], t)
    assert (codes[t.n:] == 0).all() and (sc[t.n:] == 0).all()  # values: codes after undoing the flip
    raw = packed.view(np.uint8)[2 * (base + seg.offset): 2 * (base + seg.offset + seg.size)]
    chunks = raw.reshape(-1, t.chunk_bytes)
    used = t.chunk_rows * t.chunk_cols + 4 * t.chunk_rows * t.scales_per_row
    assert (chunks[:, used:] == 0).all()
    last_task = chunks[-t.chunks:]  # the last tile's chunks: rows past 256 are stored 0x80
    rows_valid = t.n - (t.tiles - 1) * t.rows
    code_rows = last_task[:, :t.chunk_rows * t.chunk_cols].reshape(t.rows // t.chunk_rows, t.chunk_rows, t.chunk_cols)
    assert (code_rows.reshape(t.rows, t.chunk_cols)[rows_valid:] == 0x80).all()


def test_quantized_sources_regroup_and_errors():
    """QuantizedMatrix sources pack as their float weights quantized at the plan's group would
    (group 64 regrouped to 32; per-row FP8 blocks taken per row); a group the plan's is not a
    divisor of, or another format, is a one-line ValueError naming the tensor."""
    plan = q8_plan(4, "int8", 32, CASES["int8-g32-batched"][3])
    lay = make_layout(plan)
    rng = np.random.default_rng()
    w = random_weights(plan, rng)
    want = pack_weights(lay, w)
    # int8 group-64 sources whose two halves of each group share a scale: regrouped to 32
    src: dict = dict(w)
    for name, a in w.items():
        if a.ndim == 2 and "embed" not in name:
            m = quantize_int8(a, 32)
            s = m.scales.reshape(a.shape[0], -1, 2).max(axis=2)  # one scale per 64 columns
            q = np.clip(np.rint(m.dequantize().reshape(a.shape[0], -1, 64) / np.where(s == 0, 1, s)[:, :, None]),
                        -127, 127).astype(np.int8).reshape(a.shape)
            src[name] = QuantizedMatrix(q.view(np.uint8), s.astype(np.float32), "int8", 64)
    got = pack_weights(lay, src)
    for seg, layer, base in stage_segments(lay):
        um = unpack_quantized(got, seg, base)
        if seg.name == "wdown":
            m0 = src[f"model.layers.{layer}.mlp.down_proj.weight"]
            assert (um.q == m0.q).all() and (um.scales == np.repeat(m0.scales, 2, axis=1)).all()
    # torch: QuantizedTensor sources give the same bytes
    from ada_mk.quant import QuantizedTensor
    from ada_mk.runtime.weights import pack_weights_torch

    tsrc = {k: QuantizedTensor.from_matrix(v) if isinstance(v, QuantizedMatrix) else torch.from_numpy(v)
            for k, v in src.items()}
    assert (pack_weights_torch(lay, tsrc).view(torch.int16).numpy().view(np.uint16) == got).all()
    assert not (got == want).all()  # regrouping kept the 64-column values, not a requantization

    bad = dict(w)
    name = "model.layers.1.self_attn.k_proj.weight"
    bad[name] = quantize_int8(w[name], 16)
    with pytest.raises(ValueError, match=r"k_proj.weight.*group 16.*group 32") as e:
        pack_weights(lay, bad)
    assert "\n" not in str(e.value)
    bad[name] = quantize_fp8(w[name])
    with pytest.raises(ValueError, match=r"k_proj.weight.*fp8.*int8"):
        pack_weights(lay, bad)
    bad[name] = w[name].copy()
    bad[name][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"k_proj.weight.*NaN"):
        pack_weights(lay, bad)

    # per-row FP8: a source with 128-column blocks all of one scale per row is per row
    fplan = q8_plan(4, "fp8", 0, CASES["fp8-row-batched"][3])
    flay = make_layout(fplan)
    fw = random_weights(fplan, rng)
    fsrc = dict(fw)
    name = "model.layers.0.mlp.up_proj.weight"
    m = quantize_fp8(fw[name])
    fsrc[name] = m.regroup(128)
    assert (pack_weights(flay, fsrc) == pack_weights(flay, fw)).all()
    fsrc[name] = quantize_fp8(fw[name], 128)  # random rows: their 128-column blocks' scales differ
    with pytest.raises(ValueError, match=r"up_proj.weight.*group 128.*one scale per row"):
        pack_weights(flay, fsrc)


@pytest.mark.parametrize("case", ["fp8-row-batched", "int8-g32-rows"])
def test_dequantized_weights_are_what_the_kernel_multiplies(case):
    """dequantized_weights: every linear tensor (and a tied model's lm_head.weight) quantized and
    dequantized, numpy and torch alike; the rest unchanged; equal to the packed segments' values."""
    batch, fmt, group, cuts = CASES[case]
    plan = q8_plan(batch, fmt, group, cuts)
    lay = make_layout(plan)
    w = random_weights(plan, np.random.default_rng())
    dq = dequantized_weights(lay, w)
    tdq = dequantized_weights(lay, {k: torch.from_numpy(v) for k, v in w.items()})
    assert set(dq) == set(w) | {"lm_head.weight"} and set(tdq) == set(dq)
    for k, v in dq.items():
        assert (tdq[k].numpy() == v).all(), k
    assert (dq["model.embed_tokens.weight"] == w["model.embed_tokens.weight"]).all()
    assert (dq["model.norm.weight"] == w["model.norm.weight"]).all()
    name = "model.layers.1.mlp.down_proj.weight"
    assert (dq[name] == quantize(w[name], fmt, group).dequantize()).all() and not (dq[name] == w[name]).all()
    assert (dq["lm_head.weight"] == quantize(w["model.embed_tokens.weight"], fmt, group).dequantize()).all()
    # what the packed buffer holds, read back on the torch side (the prefill's view of it)
    from ada_mk.runtime.weights import pack_weights_torch
    from ada_mk.runtime.weights_q8 import dequantize_packed_torch

    buf = pack_weights_torch(lay, {k: torch.from_numpy(v) for k, v in w.items()})
    seg = lay.weights.per_layer["wdown"]
    got = dequantize_packed_torch(buf, seg, lay.weights.layer_base + lay.weights.layer_stride)
    assert (got.numpy() == dq[name]).all()
    head = dequantize_packed_torch(buf, lay.weights.globals_["lm_head"])
    assert (head.numpy() == dq["lm_head.weight"]).all()


def test_layout_json_of_8bit_segments_round_trips():
    """An 8-bit segment's JSON carries its chunking (7th entry) and reads back to the same
    segments; bf16 segments keep their 6 entries."""
    from ada_mk.checkpoints.pack import weights_layout_from_json

    plan = q8_plan(1, "fp8", 128, CASES["fp8-g128-rows"][3], tied=False)
    lay = make_layout(plan)
    doc = {"layout": lay.to_json()}
    segs = doc["layout"]["weights"]["per_layer"]
    assert len(segs["input_norm"]) == 6 and len(segs["wqkv"]) == 7
    assert segs["wqkv"][6]["chunk_bytes"] == plan.tilings["qkv"].chunk_bytes
    back = weights_layout_from_json(doc).weights
    assert back.per_layer == lay.weights.per_layer and back.globals_ == lay.weights.globals_
    segs["wqkv"][6]["chunk_bytes"] += 16
    with pytest.raises(ValueError, match="wqkv.*chunk_bytes"):
        weights_layout_from_json(doc)


def test_bf16_layouts_unchanged():
    """A bf16 plan's layout has no 8-bit segment and its JSON segments have 6 entries."""
    for batch in (1, 4):
        lay = make_layout(tiny_plan(batch))
        for r in ("globals", "per_layer"):
            for v in lay.to_json()["weights"][r].values():
                assert len(v) == 6
        assert all(s.linear is None for s in {**lay.weights.globals_, **lay.weights.per_layer}.values())


@pytest.mark.parametrize("case", ["int8-g32-batched", "fp8-row-rows"])
def test_torch_prefill_over_8bit_weights_matches_hf_on_the_dequantized_weights(case):
    """The torch prefill reads the 8-bit segments of the packed buffer (dequantize_packed_torch)
    and computes what HF computes with dequantized_weights loaded (its LM head untied)."""
    from ada_mk.runtime.hybrid import torch_prefill
    from ada_mk.runtime.weights import pack_weights_torch
    from tests.hf_util import hf_logits, hf_weights, random_hf_model

    batch, fmt, group, cuts = CASES[case]
    plan = q8_plan(batch, fmt, group, cuts)
    lay = make_layout(plan)
    m = plan.model
    hf = random_hf_model(m, seed=int(np.random.default_rng().integers(1 << 30)))
    w = hf_weights(hf)
    dq = dequantized_weights(lay, {k: torch.from_numpy(v) for k, v in w.items()})
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name in dq and name != "lm_head.weight":
                p.copy_(dq[name])
        hf.lm_head.weight = torch.nn.Parameter(dq["lm_head.weight"].clone())
        hf.config.tie_word_embeddings = False
    buf = pack_weights_torch(lay, {k: torch.from_numpy(v) for k, v in w.items()})
    ids = np.random.default_rng().integers(0, m.vocab_size, size=(1, 9))
    got = torch_prefill(m, lay.weights, buf, torch.from_numpy(ids)).numpy()[0]
    want = hf_logits(hf, ids[0])[-1]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), (np.abs(got - want).max(), np.abs(want).max())


@pytest.mark.parametrize("config,gpu,batch,fmt,group", [("llama3.2-1b", "H100", 4, "fp8", None),
                                                        ("qwen2.5-0.5b", "L20", 1, "int8", None),
                                                        ("llama3.2-1b", "L20", 4, "fp8", 128)])
def test_searched_8bit_plans_pack_what_the_kernel_computes(config, gpu, batch, fmt, group):
    """The searcher's own 8-bit plans (deploy.weights; skipped where the deployment has no such
    field) pack chunks whose kernel math is dequantize() @ x, numpy and torch alike."""
    from ada_mk.config import DeployConfig
    from ada_mk.runtime.weights import pack_weights_torch

    if "weights" not in {f.name for f in dataclasses.fields(DeployConfig)}:
        pytest.skip("this deployment has no weights format")
    m, d = load_config(ROOT / "configs" / f"{config}.yaml", gpu=gpu, batch=batch, max_context=64, weights=fmt,
                       weights_group=group)
    m = dataclasses.replace(m, num_hidden_layers=2, vocab_size=1000, name="tiny-searched")
    plan = make_plan(m, d)
    lay = make_layout(plan)
    rng = np.random.default_rng()
    w = random_weights(plan, rng)
    packed = pack_weights(lay, w)
    tp = pack_weights_torch(lay, {k: torch.from_numpy(v) for k, v in w.items()})
    assert (tp.view(torch.int16).numpy().view(np.uint16) == packed).all()
    for seg, layer, base in stage_segments(lay):
        t = plan.tilings[SEGS[seg.name]]
        assert seg.linear == t and t.weights == fmt
        want = stage_matrix(plan, seg.name, layer, w, fmt, t.group)
        x = rng.standard_normal(t.k)
        exact = want.values().astype(np.float64) * np.repeat(want.scales.astype(np.float64), want.group, axis=1)
        y = kernel_matvec(packed.view(np.uint8)[2 * (base + seg.offset): 2 * (base + seg.offset + seg.size)], t, x)
        ref = exact @ x
        assert np.allclose(y, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max()), seg.name
