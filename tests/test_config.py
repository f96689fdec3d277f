"""ada_mk.config: the shipped configs, HF config.json import, validation errors, the GPU table."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml

from ada_mk.config import (ARCH_ALIASES, GPUS, ConfigError, DeployConfig, GpuSpec, ModelConfig,
                           RopeScaling, load_config, lookup_gpu)
from ada_mk.config import load as load_mod
from ada_mk.config import read as read_mod
from ada_mk.fsutil import write_atomic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def shipped(name: str) -> ModelConfig:
    return load_config(ROOT / "configs" / f"{name}.yaml")[0]


def raw(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def write(tmp_path: Path, data, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    if isinstance(data, (str, bytes)):
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    elif name.endswith(".json"):
        p.write_text(json.dumps(data))
    else:
        p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def same_model(a: ModelConfig, b: ModelConfig) -> None:
    """Equal in every field but the name."""
    assert dataclasses.replace(a, name="x") == dataclasses.replace(b, name="x")


# --------------------------------------------------------------------------- shipped configs


def test_shipped_configs_exist():
    names = {p.stem for p in SHIPPED}
    assert {"llama3-8b", "llama3.1-8b", "llama3.2-1b", "llama3.2-3b", "mistral-7b", "qwen2.5-7b",
            "qwen2.5-0.5b", "smollm2-135m"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path):
    model, deploy = load_config(path)
    assert model.name == path.stem  # the output folder is named after the file
    assert isinstance(deploy, DeployConfig) and deploy.gpu.name == "H100"
    assert deploy.batch == 1 and deploy.dtype == "bf16"
    assert deploy.max_context == min(4096, model.max_position_embeddings)
    assert path.read_text().startswith("#")  # names the HF repo it mirrors


def test_shipped_values():
    m = shipped("llama3-8b")
    assert (m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.num_attention_heads,
            m.num_key_value_heads, m.head_dim, m.vocab_size) == (4096, 14336, 32, 32, 8, 128, 128256)
    assert (m.rope_theta, m.rms_norm_eps, m.max_position_embeddings) == (500000.0, 1e-5, 8192)
    assert m.rope_scaling is None and not m.tie_word_embeddings and not m.attention_bias
    assert shipped("llama3.1-8b").rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    one = shipped("llama3.2-1b")
    assert one.tie_word_embeddings and one.head_dim == 64 and one.rope_scaling.factor == 32.0
    three = shipped("llama3.2-3b")
    assert (three.hidden_size, three.num_attention_heads, three.head_dim) == (3072, 24, 128)
    assert shipped("qwen2.5-7b").attention_bias and shipped("qwen2.5-0.5b").attention_bias
    assert shipped("qwen2.5-0.5b").tie_word_embeddings
    smol = shipped("smollm2-135m")
    assert (smol.num_attention_heads, smol.num_key_value_heads, smol.group_size) == (9, 3, 3)


def test_yaml_keys_cover_model_config_fields():
    """Every field is a YAML key, or one of the fields beyond the Llama shape, which the YAML
    derives from model_type (qk_norm for qwen3) or leaves to HF configs (gemma3_text)."""
    from ada_mk.config.model import EXTRA_DEFAULTS

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    yaml = set(load_mod._YAML_REQUIRED) | set(load_mod._YAML_OPTIONAL)
    assert yaml | set(EXTRA_DEFAULTS) == fields and not yaml & set(EXTRA_DEFAULTS)


# --------------------------------------------------------------------------- defaults and flags


def test_deploy_defaults_and_flag_overrides(tmp_path):
    d = raw("smollm2-135m")
    del d["deploy"]
    p = write(tmp_path, d)
    _, dep = load_config(p)
    assert (dep.gpu.name, dep.batch, dep.max_context, dep.dtype) == ("H100", 1, 4096, "bf16")
    d["deploy"] = {"gpu": "L20", "batch": 2, "max_context": 1024}
    p = write(tmp_path, d)
    _, dep = load_config(p)
    assert (dep.gpu.name, dep.batch, dep.max_context) == ("L20", 2, 1024)
    _, dep = load_config(p, gpu="sm_80", batch=8, max_context=8192, dtype="bf16")
    assert (dep.gpu.name, dep.batch, dep.max_context) == ("A100", 8, 8192)


def test_default_max_context_capped_by_model(tmp_path):
    d = raw("smollm2-135m")
    del d["deploy"]
    d["model"]["max_position_embeddings"] = 2048
    assert load_config(write(tmp_path, d))[1].max_context == 2048


def test_optional_yaml_fields(tmp_path):
    d = raw("qwen2.5-0.5b")
    for key in ("head_dim", "attention_bias", "tie_word_embeddings"):
        del d["model"][key]
    m = load_config(write(tmp_path, d))[0]
    assert m.head_dim == 64 and m.attention_bias and not m.tie_word_embeddings
    d["model"]["rope_theta"] = 1000000  # an int is fine for a float field
    d["model"]["rope_scaling"] = None
    assert load_config(write(tmp_path, d))[0].rope_theta == 1e6


def test_rope_scaling_old_type_key(tmp_path):
    d = raw("llama3.1-8b")
    d["model"]["rope_scaling"]["type"] = d["model"]["rope_scaling"].pop("rope_type")
    assert load_config(write(tmp_path, d))[0].rope_scaling.rope_type == "llama3"
    d["model"]["rope_scaling"] = {"rope_type": "default"}
    assert load_config(write(tmp_path, d))[0].rope_scaling is None


def test_head_dim_explicit_may_differ_from_hidden_over_heads(tmp_path):
    d = raw("llama3-8b")
    d["model"].update(num_attention_heads=16, head_dim=128)  # 16 * 128 != 4096: allowed
    m = load_config(write(tmp_path, d))[0]
    assert m.q_size == 2048


# --------------------------------------------------------------------------- HF config.json

LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

MISTRAL_7B_V03 = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.0.dev0",
    "use_cache": True,
    "vocab_size": 32768,
}

# transformers >= 5 writes rope_theta inside rope_parameters.
LLAMA_32_1B_TF5 = {
    **{k: v for k, v in LLAMA_32_1B.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")},
    "dtype": "bfloat16",
    "rope_parameters": {**LLAMA_32_1B["rope_scaling"], "rope_theta": 500000.0},
    "transformers_version": "5.0.0",
}


def hf_dir(tmp_path: Path, folder: str, config: dict) -> Path:
    d = tmp_path / folder
    d.mkdir(parents=True)
    return write(d, config, "config.json")


@pytest.mark.parametrize("config, yaml_name", [
    (LLAMA_32_1B, "llama3.2-1b"),
    (LLAMA_32_1B_TF5, "llama3.2-1b"),
    (QWEN25_05B, "qwen2.5-0.5b"),
    (MISTRAL_7B_V03, "mistral-7b"),
], ids=["llama3.2-1b", "llama3.2-1b-tf5", "qwen2.5-0.5b", "mistral-7b-v0.3"])
def test_hf_config_json_matches_shipped_yaml(tmp_path, config, yaml_name):
    model, deploy = load_config(hf_dir(tmp_path, "Some-Model", config))
    same_model(model, shipped(yaml_name))
    assert model.name == "Some-Model"
    assert (deploy.gpu.name, deploy.batch, deploy.max_context, deploy.dtype) == ("H100", 1, 4096, "bf16")


def test_qwen2_has_qkv_bias_without_a_field(tmp_path):
    assert "attention_bias" not in QWEN25_05B
    assert load_config(hf_dir(tmp_path, "q", QWEN25_05B))[0].attention_bias


def test_hf_defaults(tmp_path):
    minimal = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1024,
               "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 1000}
    m, d = load_config(write(tmp_path, minimal, "tiny.json"))
    assert (m.rope_theta, m.rms_norm_eps, m.max_position_embeddings) == (10000.0, 1e-6, 2048)
    assert (m.num_key_value_heads, m.head_dim, m.tie_word_embeddings) == (8, 64, False)
    assert m.rope_scaling is None and not m.attention_bias
    assert m.name == "tiny" and d.max_context == 2048
    # null means "default" in HF configs
    m = load_config(write(tmp_path, {**minimal, "num_key_value_heads": None, "head_dim": None,
                                     "rope_scaling": None}, "tiny.json"))[0]
    assert (m.num_key_value_heads, m.head_dim) == (8, 64)


def test_hf_detected_without_json_suffix(tmp_path):
    m = load_config(write(tmp_path, QWEN25_05B, "qwen.yaml"))[0]
    assert m.model_type == "qwen2"


def test_hf_model_type_from_architectures(tmp_path):
    cfg = {k: v for k, v in MISTRAL_7B_V03.items() if k != "model_type"}
    assert load_config(write(tmp_path, cfg, "m.json"))[0].model_type == "mistral"


def test_hf_names(tmp_path):
    cache = tmp_path / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / ("a" * 40)
    cache.mkdir(parents=True)
    assert load_config(write(cache, QWEN25_05B, "config.json"))[0].name == "Qwen2.5-0.5B"
    p = write(tmp_path, {**QWEN25_05B, "_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "x.json")
    assert load_config(p)[0].name == "Qwen2.5-0.5B-Instruct"


def test_hf_sliding_window(tmp_path):
    v01 = {**MISTRAL_7B_V03, "sliding_window": 4096, "vocab_size": 32000, "rope_theta": 10000.0}
    p = write(tmp_path, v01, "mistral.json")
    assert load_config(p)[1].max_context == 4096  # full == sliding up to the window
    with pytest.raises(ConfigError, match=r"sliding_window = 4096: .*max_context 8192"):
        load_config(p, max_context=8192)
    # qwen2 ignores sliding_window unless use_sliding_window
    assert load_config(write(tmp_path, {**QWEN25_05B, "sliding_window": 16}, "q.json"), max_context=4096)
    with pytest.raises(ConfigError, match="sliding_window = 16"):
        load_config(write(tmp_path, {**QWEN25_05B, "sliding_window": 16, "use_sliding_window": True}, "q.json"))


def test_transformers_round_trip(tmp_path):
    """Every shipped config, written by the installed transformers as config.json, reads back."""
    transformers = pytest.importorskip("transformers")
    for path in SHIPPED:
        m = load_config(path)[0]
        kwargs = {k: v for k, v in m.to_dict().items() if k not in ("name", "model_type", "attention_bias")}
        if m.model_type == "llama":
            kwargs["attention_bias"] = m.attention_bias
        cfg = transformers.AutoConfig.for_model(m.model_type, **kwargs)
        d = tmp_path / m.name
        d.mkdir()
        cfg.to_json_file(str(d / "config.json"))
        same_model(load_config(d / "config.json")[0], m)


@pytest.mark.parametrize("mutate, match", [
    (lambda c: c.update(model_type="gemma"), r"model_type = 'gemma': unsupported model_type"),
    (lambda c: c["rope_scaling"].update(rope_type="yarn"), r"rope_scaling.rope_type = 'yarn': unsupported rope type"),
    (lambda c: c.update(rope_scaling={"type": "longrope", "factor": 2.0}), r"rope_scaling.type = 'longrope': unsupported rope type"),
    (lambda c: c.update(rope_scaling={"type": "linear", "factor": 0.5}), r"rope_scaling.factor = 0.5: must be >= 1"),
    (lambda c: c.update(rope_scaling={"type": "dynamic", "factor": 2.0}), r"unsupported rope type"),
    (lambda c: c["rope_scaling"].pop("low_freq_factor"), r"rope_scaling.low_freq_factor: missing"),
    (lambda c: c.update(hidden_act="gelu"), r"hidden_act = 'gelu': unsupported activation"),
    (lambda c: c.update(mlp_bias=True), r"mlp_bias"),
    (lambda c: c.update(attention_bias=True), r"attention_bias = True: unsupported for llama"),
    (lambda c: c.update(quantization_config={"quant_method": "awq"}), r"quantization_config"),
    (lambda c: c.update(num_key_value_heads=5), r"num_key_value_heads = 5: must divide num_attention_heads \(32\)"),
    (lambda c: c.update(hidden_size="2048"), r"hidden_size = '2048': must be a positive integer"),
    (lambda c: c.pop("hidden_size"), r"hidden_size: missing"),
    (lambda c: c.update(rope_theta=-1.0), r"rope_theta = -1.0: must be a finite number > 0"),
    (lambda c: c.update(rope_scaling=[1, 2]), r"rope_scaling = \[1, 2\]: must be a mapping"),
    (lambda c: c.update(rope_parameters={"full_attention": {"rope_type": "default"}}), r"rope_parameters: per-layer"),
])
def test_hf_bad(tmp_path, mutate, match):
    cfg = json.loads(json.dumps(LLAMA_32_1B))
    mutate(cfg)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(write(tmp_path, cfg, "config.json"))
    assert str(e.value).startswith(str(tmp_path / "config.json") + ": ")


def test_hf_rope_parameters_theta(tmp_path):
    cfg = {**LLAMA_32_1B_TF5, "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}}
    m = load_config(write(tmp_path, cfg, "c.json"))[0]
    assert m.rope_theta == 1234.0 and m.rope_scaling is None


# --------------------------------------------------------------------------- bad YAML configs


def _set(path: str, value):
    def f(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value
    return f


def _del(path: str):
    def f(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        del d[last]
    return f


BAD_YAML = [
    # (base config, mutation, expected message after "file: ")
    ("llama3-8b", _set("model.hiden_size", 1), "model.hiden_size: unknown key; did you mean 'hidden_size'?"),
    ("llama3-8b", _set("extra", 1), "extra: unknown key; expected one of model, deploy"),
    ("llama3-8b", _set("deploy.gpus", "H100"), "deploy.gpus: unknown key; did you mean 'gpu'?"),
    ("llama3.1-8b", _set("model.rope_scaling.beta", 1), "model.rope_scaling.beta: unknown key"),
    ("llama3-8b", _del("model.vocab_size"), "model.vocab_size: missing"),
    ("llama3-8b", _del("model.name"), "model.name: missing"),
    ("llama3-8b", _del("model"), "model: missing"),
    ("llama3-8b", _set("model.hidden_size", "4096"), "model.hidden_size = '4096': must be a positive integer"),
    ("llama3-8b", _set("model.num_hidden_layers", True), "model.num_hidden_layers = True: must be a positive integer"),
    ("llama3-8b", _set("model.hidden_size", 4096.0), "model.hidden_size = 4096.0: must be a positive integer"),
    ("llama3-8b", _set("model.hidden_size", 0), "model.hidden_size = 0: must be a positive integer"),
    ("llama3-8b", _set("model.vocab_size", -5), "model.vocab_size = -5: must be a positive integer"),
    ("llama3-8b", _set("model.vocab_size", 2**40), "model.vocab_size = 1099511627776: must be a positive integer <="),
    ("llama3-8b", _set("model.rms_norm_eps", 0.0), "model.rms_norm_eps = 0.0: must be a finite number > 0"),
    ("llama3-8b", _set("model.rms_norm_eps", -1e-5), "model.rms_norm_eps = -1e-05: must be a finite number > 0"),
    ("llama3-8b", _set("model.rms_norm_eps", float("nan")), "model.rms_norm_eps = nan: must be a finite number > 0"),
    ("llama3-8b", _set("model.rope_theta", 0), "model.rope_theta = 0: must be a finite number > 0"),
    ("llama3-8b", _set("model.rope_theta", float("inf")), "model.rope_theta = inf: must be a finite number > 0"),
    ("llama3-8b", _set("model.rope_theta", False), "model.rope_theta = False: must be a finite number > 0"),
    ("llama3-8b", _set("model.tie_word_embeddings", 0), "model.tie_word_embeddings = 0: must be true or false"),
    ("llama3-8b", _set("model.name", "../evil"), "model.name = '../evil': must be a file-name-safe string"),
    ("llama3-8b", _set("model.model_type", "gpt2"), "model.model_type = 'gpt2': unsupported model_type"),
    ("llama3-8b", _set("model.num_key_value_heads", 5), "model.num_key_value_heads = 5: must divide num_attention_heads (32)"),
    ("llama3-8b", lambda d: (d["model"].pop("head_dim"), d["model"].update(num_attention_heads=24)),
     "model.num_attention_heads = 24: must divide hidden_size (4096) when head_dim is not given"),
    ("llama3-8b", _set("model.head_dim", 100), "model.head_dim = 100: must be even and a multiple of 8"),
    ("llama3-8b", _set("model.head_dim", 63), "model.head_dim = 63: must be even and a multiple of 8"),
    ("llama3-8b", lambda d: (d["model"].pop("head_dim"), d["model"].update(hidden_size=32 * 36)),
     "head_dim (hidden_size / num_attention_heads) = 36: must be even and a multiple of 8"),
    ("llama3-8b", _set("model.hidden_size", 4100), "model.hidden_size = 4100: must be a multiple of 8"),
    ("llama3-8b", _set("model.intermediate_size", 14337), "model.intermediate_size = 14337: must be a multiple of 8"),
    ("llama3-8b", _set("model.rope_scaling", "llama3"), "model.rope_scaling = 'llama3': must be a mapping"),
    ("llama3.1-8b", _set("model.rope_scaling.rope_type", "yarn"), "model.rope_scaling.rope_type = 'yarn': unsupported rope type"),
    ("llama3.1-8b", _del("model.rope_scaling.factor"), "model.rope_scaling.factor: missing"),
    ("llama3.1-8b", _del("model.rope_scaling.rope_type"), "model.rope_scaling.rope_type: missing"),
    ("llama3.1-8b", _set("model.rope_scaling.high_freq_factor", 1.0), "model.rope_scaling.high_freq_factor = 1.0: must be > low_freq_factor (1)"),
    ("llama3-8b", _set("model", [1, 2]), "model = [1, 2]: must be a mapping"),
    ("llama3-8b", _set("deploy", "H100"), "deploy = 'H100': must be a mapping"),
    ("llama3-8b", _set("deploy.gpu", "V100"), "deploy.gpu = 'V100': unknown GPU"),
    ("llama3-8b", _set("deploy.gpu", 4090), "deploy.gpu = 4090: must be a string"),
    ("llama3-8b", _set("deploy.batch", 0), "deploy.batch = 0: must be a positive integer"),
    ("llama3-8b", _set("deploy.batch", 9), "deploy.batch = 9: must be in 1..8"),
    ("llama3-8b", _set("deploy.batch", "2"), "deploy.batch = '2': must be a positive integer"),
    ("llama3-8b", _set("deploy.max_context", 0), "deploy.max_context = 0: must be a positive integer"),
    ("llama3-8b", _set("deploy.max_context", 8193), "deploy.max_context = 8193: must be in 1..max_position_embeddings (8192)"),
    ("llama3-8b", _set("deploy.dtype", "fp16"), "deploy.dtype = 'fp16': unsupported dtype; expected one of bf16"),
]


@pytest.mark.parametrize("base, mutate, message", BAD_YAML, ids=[m.split(":")[0] for _, _, m in BAD_YAML])
def test_bad_yaml(tmp_path, base, mutate, message):
    d = raw(base)
    mutate(d)
    p = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    text = str(e.value)
    assert text.startswith(f"{p}: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize("flags, message", [
    ({"gpu": "V100"}, "--gpu = 'V100': unknown GPU"),
    ({"batch": 9}, "--batch = 9: must be in 1..8"),
    ({"batch": 0}, "--batch = 0: must be a positive integer"),
    ({"batch": True}, "--batch = True: must be a positive integer"),
    ({"max_context": 10**6}, "--max-context = 1000000: must be in 1..max_position_embeddings (8192)"),
    ({"dtype": "fp32"}, "--dtype = 'fp32': unsupported dtype"),
])
def test_bad_flags(flags, message):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "llama3-8b.yaml", **flags)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("text, message", [
    ("model:\n  name: x\n hidden_size: 3\n", r"c.yaml:3:\d+: invalid YAML"),
    ("model: [1, 2\n", r"c.yaml:2:\d+: invalid YAML"),
    ("model:\n  name: a\n  name: b\n", r"c.yaml:3:\d+: invalid YAML: found duplicate key 'name'"),
    ("- 1\n- 2\n", r"c.yaml: the top level must be a mapping .* not list"),
    ("just a string\n", r"the top level must be a mapping .* not str"),
    ("", r"the top level must be a mapping .* not NoneType"),
    ("when: !!timestamp 2024-13-45\n", r"c.yaml: invalid YAML value"),
    ("x: !!python/object:os.system {}\n", r"c.yaml:1:\d+: invalid YAML"),
    (b"\xff\xfe\x00bad", r"c.yaml: not UTF-8 text"),
])
def test_unparsable(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_yaml_exponent_without_dot_hint(tmp_path):
    text = (ROOT / "configs" / "llama3-8b.yaml").read_text().replace("1.0e-5", "1e-5")
    with pytest.raises(ConfigError, match=r"rms_norm_eps = '1e-5': .* write it as 1.0e-5"):
        load_config(write(tmp_path, text))


def test_invalid_json(tmp_path):
    with pytest.raises(ConfigError, match=r"c.json:1:\d+: invalid JSON"):
        load_config(write(tmp_path, '{"model_type": ', "c.json"))


def test_unreadable(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"cannot read config"):
        load_config(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (read_mod.MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="too large"):
        load_config(big)


def test_config_error_format():
    e = ConfigError("must divide num_attention_heads (32)", file="configs/x.yaml",
                    field="model.num_key_value_heads", value=5)
    assert str(e) == "configs/x.yaml: model.num_key_value_heads = 5: must divide num_attention_heads (32)"
    assert isinstance(e, ValueError)
    assert str(ConfigError("missing", file="f", field="model.x")) == "f: model.x: missing"
    long = ConfigError("bad", field="k", value="a\nb" * 1000)
    assert "\n" not in str(long) and len(str(long)) < 120
    import pickle
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# --------------------------------------------------------------------------- GPUs


def test_gpu_table():
    assert list(GPUS) == ["L20", "L40S", "RTX4090", "A100", "H100", "H200"]
    sms = {n: g.sms for n, g in GPUS.items()}
    assert sms == {"L20": 92, "L40S": 142, "RTX4090": 128, "A100": 108, "H100": 132, "H200": 132}
    for g in GPUS.values():
        assert isinstance(g, GpuSpec) and g.sources and g.regs_per_sm == 65536 and g.cp_async
        assert g.tma == (g.arch == "sm_90")
        assert g.smem_per_block == g.smem_per_sm - 1024
        assert 0 < g.read_bandwidth <= g.mem_bandwidth
    assert GPUS["H100"].smem_per_block == 232448 and GPUS["A100"].smem_per_block == 166912
    assert GPUS["L20"].smem_per_block == 101376
    assert GPUS["H100"].read_bandwidth == 3021e9 and GPUS["H200"].read_bandwidth == 4484e9
    assert GPUS["L20"].read_bandwidth == pytest.approx(0.85 * 864e9)
    assert GPUS["H100"].nvcc_arch == "sm_90a" and GPUS["A100"].nvcc_arch == "sm_80"


@pytest.mark.parametrize("name, expected", [
    ("H100", "H100"), ("h100", "H100"), ("sm_90", "H100"), ("SM_89", "L20"), ("sm_80", "A100"),
    ("RTX4090", "RTX4090"), ("4090", "RTX4090"), ("rtx 4090", "RTX4090"),
    ("NVIDIA GeForce RTX 4090", "RTX4090"), ("NVIDIA H100 80GB HBM3", "H100"), ("l40s", "L40S"),
    ("h200", "H200"), ("A100-SXM4-80GB", "A100"),
])
def test_lookup_gpu(name, expected):
    assert lookup_gpu(name).name == expected


def test_arch_aliases_point_at_their_arch():
    for arch, name in ARCH_ALIASES.items():
        assert GPUS[name].arch == arch.removesuffix("a")


@pytest.mark.parametrize("name", ["V100", "", "sm_75", "H1000"])
def test_lookup_gpu_unknown(name):
    with pytest.raises(ConfigError, match="unknown GPU"):
        lookup_gpu(name)


# --------------------------------------------------------------------------- fsutil


def test_write_atomic(tmp_path):
    p = write_atomic(tmp_path / "a" / "b.txt", "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n"
    p.chmod(0o640)
    write_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01" and (p.stat().st_mode & 0o777) == 0o640
    assert sorted(os.listdir(p.parent)) == ["b.txt"]  # no temporary left behind
    with pytest.raises(OSError):
        write_atomic(p / "under-a-file", "x")
    assert sorted(os.listdir(p.parent)) == ["b.txt"]
