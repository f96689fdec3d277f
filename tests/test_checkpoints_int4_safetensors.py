"""AWQ and GPTQ checkpoint folders (config.json + model.safetensors, tensors hand-packed by the
independent encoder of tests/test_quant_int4_awq_gptq.py) read by load_int4_safetensors; its errors
name the file and the field or tensor; load_checkpoint still refuses such folders."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ada_mk.checkpoints import CheckpointError
from ada_mk.checkpoints.int4_safetensors import load_int4_safetensors
from ada_mk.quant import AWQ_ORDER
from tests.test_quant_int4_awq_gptq import AWQ_CFG, GPTQ_CFG, check, pack_words, random_case

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
SEQ = tuple(range(8))
LINEARS = {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.0.mlp.down_proj": (128, 64)}  # (in, out)


def write_folder(folder: Path, qc: dict[str, Any] | None, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"model_type": "llama"}
    if qc is not None:
        cfg["quantization_config"] = qc
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
              str(folder / "model.safetensors"))
    return folder


def awq_tensors(g: int) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    out, cases = {}, {}
    for i, (prefix, (k, n)) in enumerate(LINEARS.items()):
        q, z, s = random_case(k, n, g, seed=i)
        out.update({f"{prefix}.qweight": pack_words(q, 1, AWQ_ORDER), f"{prefix}.qzeros": pack_words(z, 1, AWQ_ORDER),
                    f"{prefix}.scales": s})
        cases[prefix] = (q, z, s)
    out["model.norm.weight"] = np.ones(64, np.float16)
    return out, cases


def test_awq_folder(tmp_path: Path) -> None:
    tensors, cases = awq_tensors(32)
    scheme, linears = load_int4_safetensors(write_folder(tmp_path / "awq", AWQ_CFG, tensors))
    assert scheme.method == "awq" and set(linears) == {p + ".weight" for p in LINEARS}
    for prefix, (q, z, s) in cases.items():
        check(linears[prefix + ".weight"], q, z, s, 32)


def test_gptq_folder(tmp_path: Path) -> None:
    tensors, cases = {}, {}
    for i, (prefix, (k, n)) in enumerate(LINEARS.items()):
        q, z, s = random_case(k, n, 32, seed=10 + i, zmin=1)
        tensors.update({f"{prefix}.qweight": pack_words(q, 0, SEQ), f"{prefix}.qzeros": pack_words(z - 1, 1, SEQ),
                        f"{prefix}.scales": s, f"{prefix}.g_idx": (np.arange(k) // 32).astype(np.int32)})
        cases[prefix] = (q, z, s)
    scheme, linears = load_int4_safetensors(write_folder(tmp_path / "gptq", GPTQ_CFG, tensors))
    assert scheme.method == "gptq" and scheme.zeros_minus_one
    for prefix, (q, z, s) in cases.items():
        check(linears[prefix + ".weight"], q, z, s, 32)


def test_errors(tmp_path: Path) -> None:
    tensors, _ = awq_tensors(32)
    folder = write_folder(tmp_path / "bits", {**AWQ_CFG, "bits": 8}, tensors)
    with pytest.raises(CheckpointError, match=r"config\.json: quantization_config\.bits = 8: unsupported"):
        load_int4_safetensors(folder)
    folder = write_folder(tmp_path / "none", None, tensors)
    with pytest.raises(CheckpointError, match=r"config\.json: no quantization_config"):
        load_int4_safetensors(folder)
    k, n = LINEARS["model.layers.0.mlp.down_proj"]
    q, z, s = random_case(k, n, 32, seed=3, zmin=1)
    act = {"l.qweight": pack_words(q, 0, SEQ), "l.qzeros": pack_words(z - 1, 1, SEQ), "l.scales": s,
           "l.g_idx": np.random.default_rng(1).permutation(np.arange(k) // 32).astype(np.int32)}
    _, linears = load_int4_safetensors(write_folder(tmp_path / "act", {**GPTQ_CFG, "desc_act": True}, act))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'l\.g_idx' is not i // group_size"):
        linears["l.weight"]


def test_load_checkpoint_refuses_a_partial_awq_folder(tmp_path: Path) -> None:
    from ada_mk.checkpoints import load_checkpoint

    tensors, _ = awq_tensors(32)
    with pytest.raises(CheckpointError):
        load_checkpoint(write_folder(tmp_path / "awq", AWQ_CFG, tensors))


def _awq_model_folder(folder: Path, group: int, seed: int):
    """A whole tiny Llama as an AWQ GEMM checkpoint: every layer linear packed by the independent
    encoder, the rest fp16; returns (folder, model, {prefix: (q, z, s)})."""
    from ada_mk.bench.baselines import hf_config
    from ada_mk.checkpoints.names import expected_weights
    from ada_mk.config import ModelConfig

    m = ModelConfig(name="tiny-awq", model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=256, rms_norm_eps=1e-5,
                    rope_theta=1e4, max_position_embeddings=256, tie_word_embeddings=False)
    rng = np.random.default_rng(seed)
    tensors, cases = {}, {}
    for i, (name, shape) in enumerate(expected_weights(m).items()):
        if ".layers." in name and name.endswith("proj.weight"):
            n, k = shape
            prefix = name[: -len(".weight")]
            q, z, s = random_case(k, n, group, seed=seed + i)
            tensors.update({f"{prefix}.qweight": pack_words(q, 1, AWQ_ORDER),
                            f"{prefix}.qzeros": pack_words(z, 1, AWQ_ORDER), f"{prefix}.scales": s})
            cases[prefix] = (q, z, s)
        else:
            tensors[name] = (rng.standard_normal(shape) * 0.1).astype(np.float16)
    write_folder(folder, {**AWQ_CFG, "group_size": group}, tensors)
    cfg = {**hf_config(m).to_dict(), "quantization_config": {**AWQ_CFG, "group_size": group}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, m, cases


def test_load_checkpoint_reads_awq_as_int4(tmp_path: Path) -> None:
    """load_checkpoint on an AWQ folder: the linears in ck.int4 as stored (AutoAWQ's dequantization,
    tests/test_quant_int4_awq_gptq.check) and dequantized in ck.weights; an int4 plan at the
    checkpoint's group packs their codes as stored."""
    from ada_mk.checkpoints import load_checkpoint
    from ada_mk.checkpoints.pack import PackingSources
    from ada_mk.config import DeployConfig
    from ada_mk.config.gpus import lookup_gpu
    from ada_mk.runtime.weights import pack_weights
    from ada_mk.runtime.weights_int4 import unpack_int4
    from ada_mk.search.layout import make_layout
    from ada_mk.search.planner import make_plan

    folder, m, cases = _awq_model_folder(tmp_path / "awq", 64, int(np.random.default_rng().integers(1000)))
    ck = load_checkpoint(folder)
    assert ck.model.hidden_size == m.hidden_size and set(ck.int4) == {p + ".weight" for p in cases}
    for prefix, (q, z, s) in cases.items():
        check(ck.int4[prefix + ".weight"], q, z, s, 64)
        assert np.array_equal(ck.weights[prefix + ".weight"], ck.int4[prefix + ".weight"].dequantize())
    assert ck.weights["lm_head.weight"].dtype == np.float32 and "model.norm.weight" in ck.weights
    deploy = DeployConfig(gpu=lookup_gpu("H100"), batch=1, max_context=64, weights="int4", weights_group=64)
    layout = make_layout(make_plan(ck.model, deploy))
    packed = pack_weights(layout, PackingSources(ck.weights, ck.quantized, layout, ck.int4))
    q, _, _ = unpack_int4(packed, layout.weights.per_layer["wo"], layout.weights.layer_base)
    assert np.array_equal(q, ck.int4["model.layers.0.self_attn.o_proj.weight"].q)
