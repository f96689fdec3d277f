"""A plan's device buffers against the target GPU's memory (ada_mk.search.device_memory): sizes
as the engine allocates them, and adamk-gen refusing a model that cannot fit (Llama-3-70B's
published config.json on an 80 GB H100) in one line, with the sizes, writing nothing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ada_mk.config import load_config
from ada_mk.search.device_memory import CONTEXT_RESERVE_BYTES, check_fits_device, device_bytes
from ada_mk.search.errors import PlanError
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]

# meta-llama/Meta-Llama-3-70B config.json, as published (the fields the loader reads).
LLAMA3_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "torch_dtype": "bfloat16",
}


def test_sizes_are_the_engines_buffers():
    m, d = load_config(ROOT / "configs" / "llama3-8b.yaml", gpu="H100", max_context=2048)
    plan = make_plan(m, d, strategy="round-robin")
    lay = make_layout(plan)
    b = device_bytes(plan, lay)
    assert b.weights == lay.weights.total_bytes
    assert b.kv_cache == 2 * m.num_hidden_layers * m.num_key_value_heads * 2048 * m.head_dim * 2  # K and V, bf16
    assert b.scratch == lay.scratch.total_bytes + lay.counters.total_bytes
    assert check_fits_device(plan) == b  # 16.6 GB on an 80 GB card
    small = dataclasses.replace(plan.deploy.gpu, memory_bytes=b.total)  # no room for the CUDA context
    tight = dataclasses.replace(plan, deploy=dataclasses.replace(plan.deploy, gpu=small))
    with pytest.raises(PlanError, match=rf"= {b.total / 1e9:.2f} GB do not fit the card's {b.total / 1e9:.0f} GB \(less 1 GiB"):
        check_fits_device(tight)
    roomy = dataclasses.replace(small, memory_bytes=b.total + CONTEXT_RESERVE_BYTES)
    check_fits_device(dataclasses.replace(plan, deploy=dataclasses.replace(plan.deploy, gpu=roomy)))


def test_adamk_gen_refuses_a_model_too_big_for_the_card(tmp_path):
    from click.testing import CliRunner

    from ada_mk.cli.gen import main

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LLAMA3_70B))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--config", str(cfg), "--gpu", "H100", "--no-build", "--out", str(out)])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("adamk-gen: error:") and "do not fit the card's 80 GB" in line, r.output
    assert "weights 141.11 GB" in line and "KV cache 1.34 GB" in line
    assert not out.exists() or not any(out.rglob("*.*"))  # nothing written
    # with 8-bit weights the same model still does not fit (about 71 GB of weights): the sizes say so
    r = CliRunner().invoke(main, ["--config", str(cfg), "--gpu", "H200", "--no-build", "--out", str(out),
                                  "--weights-format", "fp8", "--max-context", "1024"])
    assert r.exit_code == 0, r.output  # 141 GB H200: 70 GB of fp8 weights fit
