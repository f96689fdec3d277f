"""A Hugging Face `config.json` as published -> ModelConfig, read leniently: fields we don't use
are ignored, missing ones get the defaults transformers would apply; fields that would change the
network in ways the IR does not model (another activation, an MLP bias, quantized weights other
than FP8 E4M3 (which the checkpoint loader dequantizes: ada_mk.quant.formats), an unsupported
RoPE type) are errors. Gemma 3 (`gemma3_text`, or the `text_config` of a `gemma3` config) is read
with its sliding-window layers and norms: ada_mk.config.gemma3."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..quant import QuantFormatError, fp8_scheme, int4_scheme

INT4_METHODS = ("awq", "gptq")  # quantization_config.quant_method of the 4-bit checkpoints read
from .errors import ConfigError
from .fields import Fields
from .model import ModelConfig
from .model_checks import SIZE_KEYS, model_type_of, read_rope_scaling, shape_checks


def is_hf_config(data: Mapping, path: Path) -> bool:
    """An HF config.json rather than our format: it says what model it is at the top level, or
    is a `.json` file. A top-level `model:` mapping always means our format (so a stray
    top-level key in our format is reported as unknown rather than read as HF)."""
    if isinstance(data.get("model"), Mapping):
        return False
    return "model_type" in data or "architectures" in data or path.suffix.lower() == ".json"


@dataclass(frozen=True)
class _Family:
    attention_bias: bool | None  # None: read the config's attention_bias field
    kv_heads_default: int | None  # None: num_attention_heads (MHA)
    max_position_embeddings: int
    head_dim_default: int | None = None  # None: hidden_size // num_attention_heads
    tie_default: bool = False


# The defaults transformers' LlamaConfig / MistralConfig / Qwen2Config / Qwen3Config /
# Gemma3TextConfig apply for absent fields.
_FAMILIES = {
    "llama": _Family(attention_bias=None, kv_heads_default=None, max_position_embeddings=2048),
    "mistral": _Family(attention_bias=False, kv_heads_default=8, max_position_embeddings=4096 * 32),
    # Qwen2 q/k/v projections always carry a bias; its config.json has no field for it.
    "qwen2": _Family(attention_bias=True, kv_heads_default=None, max_position_embeddings=32768),
    "qwen3": _Family(attention_bias=False, kv_heads_default=32, max_position_embeddings=32768, head_dim_default=128),
    "gemma3_text": _Family(attention_bias=False, kv_heads_default=4, max_position_embeddings=131072,
                           head_dim_default=256, tie_default=True),
}
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3ForConditionalGeneration": "gemma3",
}


def _hf_name(data: Mapping, path: Path) -> str:
    """A name for an HF config: its folder for a `config.json` (resolving the HF hub cache's
    `models--org--name/snapshots/<hash>/` layout), else `_name_or_path`, else the file stem."""
    candidates = []
    if path.name == "config.json":
        folder = path.resolve().parent
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            candidates.append(folder.parent.parent.name.split("--")[-1])
        candidates.append(folder.name)
    name_or_path = data.get("_name_or_path")
    if isinstance(name_or_path, str):
        candidates.append(name_or_path.rstrip("/").rsplit("/", 1)[-1])
    candidates += [path.stem, str(data.get("model_type"))]
    for c in candidates:
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", c).strip("-.")
        if safe:
            return safe
    return "model"


def model_from_hf(data: Mapping, file: str, path: Path) -> tuple[ModelConfig, int | None]:
    """Returns the model and the sliding window its attention would use where the model itself
    does not carry one (None: full attention)."""
    f = Fields(data, file, null_is_missing=True)
    if not f.has("model_type") and isinstance(data.get("architectures"), list):
        known = [_ARCHITECTURES[a] for a in data["architectures"] if isinstance(a, str) and a in _ARCHITECTURES]
        if known:
            data = {**data, "model_type": known[0]}
            f = Fields(data, file, null_is_missing=True)
    name = _hf_name(data, path)
    if data.get("model_type") == "gemma3":  # the multimodal config: its language model's part
        text = f.mapping("text_config") or {}
        data = {**text, "model_type": "gemma3_text"}
        f = Fields(data, file, "text_config.", null_is_missing=True)
    if data.get("model_type") == "gemma3_text":
        from .gemma3 import with_gemma3_defaults

        data = with_gemma3_defaults(data)
        f = Fields(data, file, f.prefix, null_is_missing=True)
    model_type = model_type_of(f)
    family = _FAMILIES[model_type]

    # What would change the network in ways the IR does not model.
    if model_type == "gemma3_text":
        act = f.str("hidden_activation", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise f.error("hidden_activation", "unsupported activation; expected gelu_pytorch_tanh", act)
    else:
        act = f.str("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise f.error("hidden_act", "unsupported activation; expected silu (SwiGLU MLP)", act)
    if f.bool("mlp_bias", False):
        raise f.error("mlp_bias", "unsupported; the MLP projections must have no bias", True)
    if f.has("quantization_config"):
        # FP8 and 4-bit AWQ / GPTQ weights are dequantized on load (or streamed as stored), so the
        # network is the same; other schemes are errors.
        qc = data["quantization_config"]
        try:
            if isinstance(qc, Mapping) and qc.get("quant_method") in INT4_METHODS:
                int4_scheme(qc)
            else:
                fp8_scheme(qc)
        except QuantFormatError as e:
            raise ConfigError(str(e), file=file) from None
    if model_type in ("llama", "qwen3", "gemma3_text"):
        if f.bool("attention_bias", False):
            # In HF Llama, Qwen3 and Gemma 3 this also puts a bias on o_proj, which ModelConfig cannot express.
            raise f.error("attention_bias", f"unsupported for {model_type} (it also biases o_proj)", True)
        attention_bias = False
    else:
        attention_bias = bool(family.attention_bias)

    m: dict[str, Any] = {}
    for key in SIZE_KEYS:
        if key == "num_key_value_heads":
            m[key] = f.int(key, family.kv_heads_default or m["num_attention_heads"])
        elif key == "max_position_embeddings":
            m[key] = f.int(key, family.max_position_embeddings)
        else:
            m[key] = f.int(key)
    if not f.has("head_dim") and family.head_dim_default is not None:
        f = Fields({**f.data, "head_dim": family.head_dim_default}, file, f.prefix, null_is_missing=True)
    head_dim = shape_checks(f, m, head_dim_explicit=f.has("head_dim"))
    if model_type == "gemma3_text":
        from .gemma3 import gemma3_fields

        extra = gemma3_fields(f, m["num_hidden_layers"])
        rope_theta, rope_scaling = extra.pop("rope_theta"), extra.pop("rope_scaling")
        model = ModelConfig(name=name, model_type=model_type, head_dim=head_dim,
                            rms_norm_eps=f.float("rms_norm_eps", 1e-6), rope_theta=rope_theta,
                            tie_word_embeddings=f.bool("tie_word_embeddings", family.tie_default),
                            rope_scaling=rope_scaling, **extra, **m)
        return model, None

    # RoPE: transformers 5 writes `rope_parameters` (with rope_theta inside), older versions
    # `rope_theta` plus `rope_scaling`.
    theta_f = f
    rope_src = "rope_parameters" if f.has("rope_parameters") else "rope_scaling"
    rope = f.mapping(rope_src)
    if rope is not None:
        if any(isinstance(v, Mapping) for v in rope.values()):
            raise f.error(rope_src, "per-layer-type RoPE parameters are not supported")
        rf = Fields(rope, file, f"{rope_src}.", null_is_missing=True)
        if rf.has("rope_theta"):
            theta_f = rf
        rope_scaling = read_rope_scaling(rf, strict=False)
    else:
        rope_scaling = None
    rope_theta = theta_f.float("rope_theta", 10000.0)

    # Sliding window: Mistral uses it whenever set; Qwen2 only with use_sliding_window (or when
    # transformers 5's layer_types lists sliding layers).
    layer_types = data.get("layer_types")
    sliding_layers = isinstance(layer_types, list) and "sliding_attention" in layer_types
    qwen = model_type in ("qwen2", "qwen3")
    if model_type == "mistral" or sliding_layers or (qwen and f.bool("use_sliding_window", False)):
        window = f.int("sliding_window", None)
    else:
        window = None

    model = ModelConfig(
        name=name,
        model_type=model_type,
        head_dim=head_dim,
        rms_norm_eps=f.float("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        tie_word_embeddings=f.bool("tie_word_embeddings", family.tie_default),
        attention_bias=attention_bias,
        rope_scaling=rope_scaling,
        qk_norm=model_type == "qwen3",
        **m,
    )
    return model, window
