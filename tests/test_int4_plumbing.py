"""int4 plans fed from checkpoints: a GGUF's Q4_0 / Q4_1 matrices are packed as stored (codes
unchanged, scale and offset pairs the bf16 of gguf's d and m), its other tensors (Q8_0, F32)
quantized on load; adamk-pack writes that buffer; a stored group the plan's does not divide is a
one-line error naming --weights-group; the torch prefill and the bench reference read int4
segments as the kernel multiplies them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ada_mk.checkpoints import load_checkpoint
from ada_mk.checkpoints.pack import PackingSources, pack_checkpoint, read_packed
from ada_mk.config import DeployConfig, ModelConfig
from ada_mk.config.gpus import lookup_gpu
from ada_mk.quant import quantize_int4
from ada_mk.runtime.weights import pack_weights
from ada_mk.runtime.weights_int4 import kernel_weights, unpack_int4
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan
from tests.gguf_util import write_gguf
from tests.test_checkpoints_gguf import random_weights

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

SMALL = ModelConfig(name="tiny-q4", model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=300, rms_norm_eps=1e-5,
                    rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)
QTYPES = {"q_proj.weight": "Q4_0", "k_proj.weight": "Q4_1", "v_proj.weight": "Q4_1", "o_proj.weight": "Q4_0",
          "gate_proj.weight": "Q4_1", "up_proj.weight": "Q8_0", "down_proj.weight": "Q4_1", "lm_head.weight": "Q4_0"}


def bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).float().numpy()


@pytest.fixture(scope="module")
def gguf_ck(tmp_path_factory):
    w = random_weights(SMALL, seed=int(np.random.default_rng().integers(1 << 30)))
    path = write_gguf(tmp_path_factory.mktemp("g") / "q4.gguf", SMALL, w, QTYPES)
    return path, load_checkpoint(path)


def int4_layout(batch: int, group: int):
    deploy = DeployConfig(gpu=lookup_gpu("H100"), batch=batch, max_context=64, weights="int4", weights_group=group)
    return make_layout(make_plan(SMALL, deploy))


@pytest.mark.parametrize("batch", [1, 4])
def test_gguf_q4_packed_as_stored(gguf_ck, tmp_path: Path, batch: int) -> None:
    path, ck = gguf_ck
    assert {n for n in ck.int4} and not any(n.endswith("up_proj.weight") for n in ck.int4)
    layout = int4_layout(batch, 32)
    out = tmp_path / "w.bin"
    size = pack_checkpoint(ck.weights, layout, out, ck.quantized, ck.int4)
    packed = read_packed(out, layout)
    assert packed.nbytes == size
    w = layout.weights
    for layer in range(SMALL.num_hidden_layers):
        base = w.layer_base + layer * w.layer_stride
        p = f"model.layers.{layer}."
        # o_proj: Q4_0 as stored: codes, and (scale, offset) = bf16(d), -8 * bf16(d)
        q, s, o = unpack_int4(packed, w.per_layer["wo"], base)
        m = ck.int4[p + "self_attn.o_proj.weight"]
        assert np.array_equal(q, m.q) and np.array_equal(s, bf16(m.scales)) and np.array_equal(o, -8 * s)
        # gguf's dequantization, up to the bf16 roundings of d and of the weight
        want = ck.weights[p + "self_attn.o_proj.weight"]
        got = kernel_weights(q, s, o, 32)
        tol = 2 ** -7 * np.repeat(np.abs(want).reshape(want.shape[0], -1, 32).max(2), 32, 1)
        assert (np.abs(got - want) <= tol).all()
        # gate|up interleaved: gate Q4_1 as stored, up (Q8_0) quantized on load from its float weights
        q, s, o = unpack_int4(packed, w.per_layer["wgate_up"], base)
        gate, up = ck.int4[p + "mlp.gate_proj.weight"], quantize_int4(ck.weights[p + "mlp.up_proj.weight"], 32)
        assert np.array_equal(q[0::2], gate.q) and np.array_equal(o[0::2], bf16(gate.offsets))
        assert np.array_equal(q[1::2], up.q) and np.array_equal(s[1::2], bf16(up.scales))
    # the same bytes through pack_weights over PackingSources, and through torch
    src = PackingSources(ck.weights, ck.quantized, layout, ck.int4)
    assert np.array_equal(pack_weights(layout, src), packed)


def test_a_stored_group_the_plan_does_not_divide(gguf_ck, tmp_path: Path) -> None:
    _, ck = gguf_ck
    layout = int4_layout(1, 128)
    with pytest.raises(ValueError, match=r"is int4 with group 32; the plan streams int4 with group 128, which must"
                                         r" divide it \(--weights-group 32\)") as e:
        pack_checkpoint(ck.weights, layout, tmp_path / "w.bin", ck.quantized, ck.int4)
    assert "\n" not in str(e.value)


def test_adamk_pack_int4(gguf_ck, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ada_mk.cli.pack import main

    path, ck = gguf_ck
    out = tmp_path / "w.bin"
    r = CliRunner().invoke(main, ["--weights", str(path), "-o", str(out), "--weights-format", "int4",
                                  "--weights-group", "32", "--gpu", "H100", "--max-context", "64"])
    assert r.exit_code == 0, (r.output, r.exception)
    layout = int4_layout(1, 32)
    assert np.array_equal(read_packed(out, layout), pack_weights(layout, PackingSources(ck.weights, ck.quantized,
                                                                                         layout, ck.int4)))


def test_torch_prefill_reads_int4_segments() -> None:
    """HybridPrefill's weights over an int4 buffer: the kernel's weights (dequantize_segment_torch)."""
    from ada_mk.runtime.weights import dequantize_segment_torch, pack_weights_torch

    layout = int4_layout(4, 64)
    rng = np.random.default_rng()
    w = random_weights(SMALL, seed=int(rng.integers(1 << 30)))
    buf = pack_weights_torch(layout, {k: torch.from_numpy(v) for k, v in w.items()})
    seg = layout.weights.per_layer["wdown"]
    base = layout.weights.layer_base
    got = dequantize_segment_torch(buf, seg, base).numpy()
    m = quantize_int4(w["model.layers.0.mlp.down_proj.weight"], 64)
    assert got.shape == m.q.shape
    q64 = torch.from_numpy(m.q.astype(np.float64)).reshape(m.q.shape[0], -1, 64)
    exact = q64 * torch.from_numpy(bf16(m.scales)).double()[..., None] + torch.from_numpy(bf16(m.offsets)).double()[..., None]
    assert np.array_equal(got, exact.to(torch.bfloat16).float().reshape(m.q.shape).numpy())


def test_adamk_pack_for_a_kernels_int4_plan(gguf_ck, tmp_path: Path) -> None:
    """--plan of an int4 kernel (its layers int4, its head int8) with --weights-format int4."""
    import json

    from click.testing import CliRunner

    from ada_mk.cli.pack import main
    from ada_mk.codegen.render import plan_json

    path, ck = gguf_ck
    deploy = DeployConfig(gpu=lookup_gpu("H100"), batch=1, max_context=64, weights="int4", weights_group=32)
    plan = make_plan(SMALL, deploy)
    layout = make_layout(plan)
    doc = tmp_path / "plan.json"
    doc.write_text(plan_json(plan, layout))
    out = tmp_path / "w.bin"
    r = CliRunner().invoke(main, ["--weights", str(path), "--plan", str(doc), "-o", str(out), "--weights-format", "int4"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert json.loads(doc.read_text())["plan"]["weights"] == "int4"
    assert np.array_equal(read_packed(out, layout), pack_weights(layout, PackingSources(ck.weights, ck.quantized,
                                                                                         layout, ck.int4)))
