"""4-bit weights packed into the device layout (docs/quantized-weights.md, "The packed chunk", int4):
every byte and nibble where the document puts it (an element-by-element oracle written from the
document), numpy and torch packing byte for byte, the weights the kernel multiplies against the
source's own dequantization (float weights within half a step; GGUF Q4_0 / Q4_1 blocks against
the gguf package), stored 4-bit sources, the layout's int4 segments, and bad inputs."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from ada_mk.config import load_config
from ada_mk.quant import Int4Matrix, quantize_int4
from ada_mk.quant.int4_torch import Int4Tensor
from ada_mk.runtime.weights import pack_weights, pack_weights_torch
from ada_mk.runtime.weights_int4 import (block_swizzle, dequantized_source, kernel_weights, pack_chunks,
                                         unpack_chunks, unpack_int4)
from ada_mk.search.layout import make_layout, quantized_from_json, quantized_json
from ada_mk.search.plan import LinearTiling
from ada_mk.search.planner import make_plan

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng()


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 -> float32, round to nearest even (torch's conversion)."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).float().numpy()


def oracle_bytes(q: np.ndarray, s: np.ndarray, o: np.ndarray, t: LinearTiling) -> np.ndarray:
    """The segment's bytes built element by element from the document's rules (slow; small t)."""
    out = np.zeros(t.tasks * t.chunks * t.chunk_bytes, np.uint8)
    cr, cc = t.chunk_rows, t.chunk_cols
    row_bytes = cc // 2
    sb = bf16(s).view(np.uint32) >> 16
    ob = bf16(o).view(np.uint32) >> 16
    for task in range(t.tasks):
        tile, split = divmod(task, t.ksplit)
        for c in range(t.chunks):
            group, part = divmod(c, t.kparts)
            base = (task * t.chunks + c) * t.chunk_bytes
            for r in range(cr):
                n = tile * t.rows + group * cr + r
                if n >= t.n:
                    continue  # padding rows: zero codes, zero pairs
                k0 = split * t.kc + part * cc
                for col in range(cc):
                    blk, within = divmod(col, 64)
                    half, rest = divmod(within, 32)
                    j, e = divmod(rest, 8)
                    nib = e // 2 + 4 * (e % 2)  # column 2i -> nibble i, 2i + 1 -> nibble 4 + i
                    swz = 0
                    if t.batched and row_bytes % 128 == 0:
                        swz = r & 3
                    elif t.batched and row_bytes % 128 == 64:
                        swz = (r >> 1) & 1
                    byte = r * row_bytes + 32 * (blk ^ swz) + 8 * j + 4 * half + nib // 2
                    out[base + byte] |= int(q[n, k0 + col]) << (4 * (nib % 2))
                for g in range(t.scales_per_row):
                    gi = (k0 + g * t.group) // t.group
                    word = int(sb[n, gi]) | int(ob[n, gi]) << 16
                    at = base + t.code_bytes + 4 * (r * t.scales_per_row + g)
                    out[at:at + 4] = np.frombuffer(np.uint32(word).tobytes(), np.uint8)
    return out


# (n, k, rows, ksplit, wpr, batched, group): rows multiply (no swizzle); batched with rows of whole
# 128-byte lines (swizzle r % 4), of 64 mod 128 bytes (swizzle (r / 2) % 2), of 32 mod 128 (none);
# K-splits, several parts, padding rows.
SHAPES = [(37, 576, 8, 1, 1, False, 32), (20, 512, 12, 2, 2, False, 64), (40, 512, 32, 1, 1, True, 128),
          (30, 768, 16, 2, 1, True, 64), (19, 256, 16, 1, 2, True, 128), (33, 1024, 32, 2, 2, True, 32),
          (17, 192, 16, 1, 1, True, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + ("b" if s[5] else "r") + f"g{s[6]}")
def test_chunks_follow_the_document(shape) -> None:
    n, k, rows, ks, wpr, batched, group = shape
    t = LinearTiling(n, k, rows, ks, wpr, batched, True, "int4", group)
    assert t.whole_column_blocks
    q = rng.integers(0, 16, (n, k), dtype=np.uint8)
    s = (rng.random((n, k // group)) * 0.02).astype(np.float32)
    o = (-rng.random((n, k // group)) * 0.15).astype(np.float32)
    flat = pack_chunks(q, s, o, t)
    assert flat.dtype == np.uint8 and flat.size == t.tasks * t.chunks * t.chunk_bytes
    assert np.array_equal(flat, oracle_bytes(q, s, o, t))
    tflat = pack_chunks(torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(o), t)
    assert np.array_equal(tflat.numpy(), flat)
    uq, us, uo = unpack_chunks(flat, t)
    assert np.array_equal(uq[:n], q) and not uq[n:].any()
    assert np.array_equal(us[:n], bf16(s)) and np.array_equal(uo[:n], bf16(o))
    tq, ts, to = unpack_chunks(tflat, t)
    assert np.array_equal(tq.numpy(), uq) and np.array_equal(ts.numpy(), us) and np.array_equal(to.numpy(), uo)


def test_swizzle_spreads_the_banks() -> None:
    """With the batched multiply, rows 4m .. 4m + 3 at one column lie in four different 32-byte
    quarters of the banks (one 16-lane phase of an 8-byte load)."""
    for cc in (64, 128, 192, 256, 320, 512, 1024):
        t = LinearTiling(64, 2 * cc, 16, 1, 2, True, True, "int4", 64)
        m = block_swizzle(t)
        for col_block in range(cc // 64):
            quarters = [((r * cc // 2) + 32 * (col_block ^ m[r])) // 32 % 4 for r in range(16)]
            for g in range(4):
                assert len(set(quarters[4 * g:4 * g + 4])) == 4, (cc, col_block, quarters)


def test_kernel_weights_are_one_rounding_of_q_scale_plus_offset() -> None:
    q = rng.integers(0, 16, (64, 128), dtype=np.uint8)
    s = bf16((rng.random((64, 4)) * 0.05).astype(np.float32))
    o = bf16((-rng.random((64, 4)) * 0.4).astype(np.float32))
    got = kernel_weights(q, s, o, 32)
    # torch computes the fma in float64 (exact here), then rounds once to bf16
    exact = torch.from_numpy(q.astype(np.float64)).reshape(64, 4, 32)
    exact = exact * torch.from_numpy(s.astype(np.float64))[..., None]
    exact = exact + torch.from_numpy(o.astype(np.float64))[..., None]
    assert np.array_equal(got, exact.to(torch.bfloat16).float().reshape(64, 128).numpy())
    tg = kernel_weights(torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(o), 32)
    assert np.array_equal(tg.numpy(), got)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_float_sources_are_quantized_within_half_a_step(group: int) -> None:
    n, k = 48, 512
    t = LinearTiling(n, k, 16, 1, 1, True, True, "int4", group)
    w = (rng.standard_normal((n, k)) * 0.03).astype(np.float32)
    got = dequantized_source("w", w, t)
    step = (w.reshape(n, -1, group).max(2) - w.reshape(n, -1, group).min(2)) / 15
    err = np.abs(got - w).reshape(n, -1, group).max(2)
    # half a step of round to nearest, plus the bf16 rounding of scale, offset and the weight
    assert (err <= 0.5 * step + 2 ** -6 * np.abs(w).reshape(n, -1, group).max(2) + 1e-7).all()
    tg = dequantized_source("w", torch.from_numpy(w), t)
    assert np.array_equal(tg.numpy(), got)


def test_gguf_q4_blocks_against_gguf() -> None:
    """Q4_0 (symmetric, offset = -8 * d) and Q4_1 blocks of the gguf package's own encoding: the
    kernel's weights are gguf's dequantization up to the bf16 roundings of d, m and the weight
    (within 2^-6 of the group's largest weight; symmetric Q4_0, whose offset -8 * bf16(d) is exact,
    within 2^-7)."""
    gguf = pytest.importorskip("gguf")
    from ada_mk.quant.gguf_q4 import q4_0_matrix, q4_1_matrix

    n, k = 24, 256
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    t = LinearTiling(n, k, 16, 1, 1, True, True, "int4", 32)
    for qt, reader in ((gguf.GGMLQuantizationType.Q4_0, q4_0_matrix), (gguf.GGMLQuantizationType.Q4_1, q4_1_matrix)):
        raw = gguf.quants.quantize(w, qt)
        want = gguf.quants.dequantize(raw, qt).reshape(n, k)
        m = reader(raw, (n, k))
        got = dequantized_source("w", m, t)
        tol = (2 ** -7 if qt == gguf.GGMLQuantizationType.Q4_0 else 2 ** -6) * np.abs(want).reshape(n, -1, 32).max(
            2, keepdims=True)
        assert (np.abs(got - want).reshape(n, -1, 32) <= tol).all(), qt


def test_stored_int4_sources_regroup_and_errors() -> None:
    n, k = 16, 256
    m = quantize_int4(rng.standard_normal((n, k)).astype(np.float32), 128)
    t64 = LinearTiling(n, k, 16, 1, 1, True, True, "int4", 64)
    # a group of 128 streams at 64: pairs repeated, the same weights
    got = dequantized_source("w", m, t64)
    assert np.array_equal(got, kernel_weights(m.q, bf16(m.scales), bf16(m.offsets), 128))
    assert np.array_equal(dequantized_source("w", Int4Tensor.from_matrix(m), t64).numpy(), got)
    small = quantize_int4(rng.standard_normal((n, k)).astype(np.float32), 32)
    t128 = LinearTiling(n, k, 16, 1, 1, True, True, "int4", 128)
    with pytest.raises(ValueError, match="'w' is int4 with group 32; the plan streams int4 with group 128"):
        dequantized_source("w", small, t128)
    with pytest.raises(ValueError, match="'w': quantize_int4: the weights hold NaN"):
        dequantized_source("w", np.full((n, k), np.nan, np.float32), t128)
    with pytest.raises(ValueError, match="do not fit the int4 tiling"):
        pack_chunks(m.q[:, :128], m.scales, m.offsets, t128)
    sym = quantize_int4(rng.standard_normal((n, k)).astype(np.float32), 32, symmetric=True)
    t32 = LinearTiling(n, k, 16, 1, 1, True, True, "int4", 32)
    want = bf16(((sym.q.astype(np.float32) - 8).reshape(n, -1, 32) * bf16(sym.scales)[..., None]).reshape(n, k))
    assert np.array_equal(dequantized_source("w", sym, t32), want)  # (q - 8) * bf16(s), rounded once


def tiny_int4_plan(batch: int, group: int):
    m, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu="H100", batch=batch, max_context=64,
                       weights="int4", weights_group=group)
    m = dataclasses.replace(m, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, vocab_size=328, name="tiny-int4")
    return make_plan(m, d)


@pytest.mark.parametrize("batch,group", [(1, 128), (4, 64), (4, 32)])
def test_layout_segments_pack_what_the_kernel_multiplies(batch: int, group: int) -> None:
    plan = tiny_int4_plan(batch, group)
    lay = make_layout(plan)
    m = plan.model
    names = {}
    for seg in list(lay.weights.globals_.values()) + list(lay.weights.per_layer.values()):
        if seg.linear is not None:  # the LM head streams int8 (config.deploy.stage_format)
            want = ("int8", 32) if seg.name == "lm_head" else ("int4", group)
            assert (seg.weights, seg.linear.group) == want
            assert quantized_from_json(quantized_json(seg.linear), seg.name) == seg.linear
    from tests.test_pack_q8 import random_weights  # the same HF-named random checkpoint

    w = random_weights(plan, rng)
    packed = pack_weights(lay, w)
    tpacked = pack_weights_torch(lay, {k: torch.from_numpy(v) for k, v in w.items()})
    assert np.array_equal(tpacked.view(torch.int16).numpy().view(np.uint16), packed)
    for layer in range(m.num_hidden_layers):
        base = lay.weights.layer_base + layer * lay.weights.layer_stride
        seg = lay.weights.per_layer["wo"]
        q, s, o = unpack_int4(packed, seg, base)
        src = w[f"model.layers.{layer}.self_attn.o_proj.weight"]
        got = kernel_weights(q, s, o, group)
        assert np.array_equal(got, dequantized_source("o", src, seg.linear))
        g = src.reshape(src.shape[0], -1, group)
        step = np.repeat((g.max(2) - g.min(2)) / 15, group, 1)
        big = np.repeat(np.abs(g).max(2), group, 1)
        assert (np.abs(got - src) <= 0.5 * step + 2 ** -6 * big + 1e-7).all()
        names[layer] = True
    assert names
