"""NaN / Inf in the weights, found on request (ada_mk.runtime.weights_check; the C ABI's
adamk_check_weights walks the same segment table on the GPU: tests/gpu/test_misuse_gpu.py).

A NaN or Inf put at a random element of a random HF tensor is named (tensor, index) before packing,
and after packing named by segment, layer, HF tensors and the byte the layout puts that element
at (row-major bf16, computed here from the tensor's shape). Quantized buffers are corrupted where
docs/quantized-weights.md puts a chunk's codes and scales (quantizing refuses NaN itself)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from ada_mk.config import load_config
from ada_mk.ir.build import build_decode_graph
from ada_mk.runtime.weights import pack_weights
from ada_mk.runtime.weights_check import check_packed, check_tensors, weight_segments
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]


def small_plan(weights: str = "bf16", batch: int = 1):
    group = 64 if weights == "int4" else None  # SmolLM2's K = 576 is 9 groups of 64
    m, d = load_config(ROOT / "configs" / "smollm2-135m.yaml", max_context=64, weights=weights, batch=batch,
                       weights_group=group)
    m = dataclasses.replace(m, num_hidden_layers=2, name="smollm2-2l")
    return make_plan(m, d)


def random_weights(plan, rng) -> dict[str, np.ndarray]:
    g = build_decode_graph(plan.model, None, batch=plan.batch, max_context=plan.deploy.max_context)
    return {t.name: (0.02 * rng.standard_normal(t.shape)).astype(np.float32) for t in g.weights()}


@pytest.fixture(scope="module")
def bf16_plan():
    return small_plan()


def test_tensors_named_with_index(bf16_plan) -> None:
    rng = np.random.default_rng()
    w = random_weights(bf16_plan, rng)
    check_tensors(w)
    names = sorted(w)
    name = names[rng.integers(len(names))]
    idx = tuple(int(rng.integers(s)) for s in w[name].shape)
    w[name][idx] = rng.choice([np.nan, np.inf, -np.inf])
    with pytest.raises(ValueError, match=re.escape(f"tensor {name!r} holds")) as e:
        check_tensors(w)
    assert f"at index {idx}" in str(e.value) and len(str(e.value).splitlines()) == 1
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=re.escape(f"at index {idx}")):
        check_tensors({k: torch.from_numpy(v) for k, v in w.items()})


@pytest.mark.parametrize("batch", [1, 4])
def test_packed_bf16_names_segment_layer_and_byte(batch: int) -> None:
    """batch 1: row-major matrices, so the byte is 2 * (row * K + col) of the segment; batch 4 on
    Hopper stores some matrices tiled, so there only the segment and layer are checked."""
    plan = small_plan(batch=batch)
    layout = make_layout(plan)
    rng = np.random.default_rng()
    w = random_weights(plan, rng)
    check_packed(layout, pack_weights(layout, w))
    layer = int(rng.integers(plan.model.num_hidden_layers))
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    row, col = (int(rng.integers(s)) for s in w[name].shape)
    w[name][row, col] = np.nan
    with pytest.raises(ValueError) as e:
        check_packed(layout, pack_weights(layout, w))
    msg = str(e.value)
    assert f"segment wdown of layer {layer} ({name})" in msg, msg
    if not layout.weights.per_layer["wdown"].tiling:
        assert f"at byte {2 * (row * w[name].shape[1] + col)} of the segment's" in msg, msg


@pytest.mark.parametrize("fmt,part", [("fp8", "code"), ("fp8", "scale"), ("int8", "scale"), ("int4", "scale")])
def test_packed_quantized_codes_and_scales(fmt: str, part: str) -> None:
    plan = small_plan(fmt)
    layout = make_layout(plan)
    rng = np.random.default_rng()
    packed = pack_weights(layout, random_weights(plan, rng))
    check_packed(layout, packed)
    segs = [s for s in weight_segments(layout) if s.chunk_bytes]
    assert segs, "a quantized plan has quantized segments"
    seg = segs[rng.integers(len(segs))]
    layer = int(rng.integers(plan.model.num_hidden_layers)) if seg.per_layer else 0
    t = (layout.weights.per_layer if seg.per_layer else layout.weights.globals_)[seg.name].linear
    chunk = int(rng.integers(seg.bytes // t.chunk_bytes))
    raw = packed.view(np.uint8).copy()
    start = seg.offset + layer * layout.weights.layer_stride * 2 + chunk * t.chunk_bytes
    if part == "code":
        at = int(rng.integers(t.code_bytes))
        raw[start + at] = 0x7F | (0x80 * int(rng.integers(2)))  # E4M3's NaN, either sign
        what = "fp8 code"
    else:
        scales = 4 * t.chunk_rows * t.scales_per_row
        if t.weights == "int4":  # bf16 (scale, offset) pairs (an int4 plan's LM head is int8: float32 scales)
            at = t.code_bytes + 2 * int(rng.integers(scales // 2))
            raw[start + at:start + at + 2] = np.array([0x7FC0], "<u2").view(np.uint8)
            what = "bf16 scale or offset"
        else:
            at = t.code_bytes + 4 * int(rng.integers(scales // 4))
            raw[start + at:start + at + 4] = np.array([np.inf], "<f4").view(np.uint8)
            what = "float32 scale"
    with pytest.raises(ValueError) as e:
        check_packed(layout, raw)
    msg = str(e.value)
    where = f"segment {seg.name}" + (f" of layer {layer}" if seg.per_layer else "")
    assert f"({what}) in {where} (" in msg and f"at byte {chunk * t.chunk_bytes + at} of the segment's" in msg, msg


def test_first_in_buffer_order(bf16_plan) -> None:
    layout = make_layout(bf16_plan)
    rng = np.random.default_rng()
    w = random_weights(bf16_plan, rng)
    w["model.layers.1.self_attn.o_proj.weight"][0, 0] = np.inf
    w["model.layers.0.mlp.up_proj.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match="segment wgate_up of layer 0"):
        check_packed(layout, pack_weights(layout, w))


def test_segment_table_covers_the_layout(bf16_plan) -> None:
    """Segments in buffer order, inside the buffer, none overlapping; the tied LM head once."""
    layout = make_layout(bf16_plan)
    w = layout.weights
    spans = []
    for s in weight_segments(layout):
        for layer in range(w.layers if s.per_layer else 1):
            spans.append((s.offset + layer * w.layer_stride * w.unit, s.bytes))
    spans.sort()
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert spans[-1][0] + spans[-1][1] <= w.total_bytes
    assert [s.name for s in weight_segments(layout)].count("embed") == 1
    assert "lm_head" not in [s.name for s in weight_segments(layout)]  # SmolLM2 ties it to the embedding

