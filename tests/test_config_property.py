"""Property tests: whatever the input, load_config returns a config or raises ConfigError.

A user's typo must never surface as a KeyError/TypeError traceback. Inputs: random nested data,
mutations of valid configs (both formats), random text and bytes, random flags.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ada_mk.config import ConfigError, DeployConfig, ModelConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
BASES = [yaml.safe_load(p.read_text()) for p in SHIPPED]
assert BASES

HF_BASE = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

KEYS = st.sampled_from(["model", "deploy", "name", "model_type", "hidden_size", "head_dim", "rope_scaling",
                        "rope_type", "type", "factor", "gpu", "batch", "max_context", "dtype",
                        "rope_parameters", "rope_theta", "sliding_window"]) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-10, 10) | st.integers() | st.floats()
           | st.text(max_size=10) | st.sampled_from(["llama", "qwen2", "mistral", "llama3", "default", "H100", "bf16"]))
JUNK = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(KEYS, c, max_size=4),
                    max_leaves=12)


def paths(d, prefix=()):
    """Every key path into nested dicts."""
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from paths(v, prefix + (k,))


def at(d, path):
    for k in path[:-1]:
        d = d[k]
    return d


@st.composite
def mutated(draw, base):
    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        ps = list(paths(d))
        kind = draw(st.sampled_from(["drop", "add", "junk", "negate", "type"]))
        if not ps:
            break
        path = draw(st.sampled_from(ps))
        parent, key = at(d, path), path[-1]
        if kind == "drop":
            del parent[key]
        elif kind == "add":
            parent[draw(KEYS)] = draw(JUNK)
        elif kind == "junk":
            parent[key] = draw(JUNK)
        elif kind == "negate" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = -parent[key]
        elif kind == "type":
            v = parent[key]
            parent[key] = draw(st.sampled_from([str(v), [v], {"v": v}, None, True, 0, 1.5]))
    return d


def write(tmp_dir: Path, data, suffix: str) -> Path:
    p = tmp_dir / f"c{suffix}"
    if isinstance(data, bytes):
        p.write_bytes(data)
    elif suffix == ".json":
        p.write_text(json.dumps(data, allow_nan=True))
    else:
        p.write_text(yaml.safe_dump(data, allow_unicode=True))
    return p


def check(path: Path, **flags) -> None:
    try:
        model, deploy = load_config(path, **flags)
    except ConfigError as e:
        text = str(e)
        assert text and "\n" not in text, text
        return
    # Accepted: it must be a sane config.
    assert isinstance(model, ModelConfig) and isinstance(deploy, DeployConfig)
    assert model.num_attention_heads % model.num_key_value_heads == 0
    assert model.head_dim % 8 == 0 and model.hidden_size % 8 == 0 and model.intermediate_size % 8 == 0
    assert math.isfinite(model.rope_theta) and model.rope_theta > 0 and model.rms_norm_eps > 0
    assert 1 <= deploy.batch <= 8 and 1 <= deploy.max_context <= model.max_position_embeddings


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prop")


@SETTINGS
@given(data=st.dictionaries(KEYS, JUNK, max_size=5) | JUNK, suffix=st.sampled_from([".yaml", ".json"]))
def test_random_data(tmp_dir, data, suffix):
    check(write(tmp_dir, data, suffix))


@SETTINGS
@given(data=st.sampled_from(BASES).flatmap(mutated), suffix=st.sampled_from([".yaml", ".json"]))
def test_mutated_yaml_configs(tmp_dir, data, suffix):
    check(write(tmp_dir, data, suffix))


@SETTINGS
@given(data=mutated(HF_BASE), suffix=st.sampled_from([".yaml", ".json"]))
def test_mutated_hf_configs(tmp_dir, data, suffix):
    check(write(tmp_dir, data, suffix))


@SETTINGS
@given(text=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.sampled_from([p.read_bytes() for p in SHIPPED]).flatmap(
           lambda b: st.tuples(st.integers(0, len(b)), st.binary(max_size=8)).map(lambda t: b[:t[0]] + t[1] + b[t[0]:])),
       suffix=st.sampled_from([".yaml", ".json"]))
def test_random_bytes(tmp_dir, text, suffix):
    check(write(tmp_dir, text, suffix))


@SETTINGS
@given(gpu=st.none() | st.text(max_size=8) | st.sampled_from(["H100", "sm_89", "4090"]) | st.integers(),
       batch=st.none() | st.integers(-2, 12) | st.booleans() | st.text(max_size=3),
       max_context=st.none() | st.integers(-1, 10**6) | st.floats(),
       dtype=st.none() | st.sampled_from(["bf16", "fp16", ""]) | st.integers())
def test_random_flags(gpu, batch, max_context, dtype):
    check(SHIPPED[0], gpu=gpu, batch=batch, max_context=max_context, dtype=dtype)
