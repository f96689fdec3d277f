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


def test_load_checkpoint_still_refuses_awq(tmp_path: Path) -> None:
    from ada_mk.checkpoints import load_checkpoint

    tensors, _ = awq_tensors(32)
    with pytest.raises(CheckpointError):
        load_checkpoint(write_folder(tmp_path / "awq", AWQ_CFG, tensors))
