"""The Gemma 3 text model's fields of an HF config (`gemma3_text`, or the `text_config` of a
`gemma3` config): four (1 + w) RMSNorms per block, q/k norms, embeddings scaled by sqrt(hidden),
a GELU-tanh gated MLP, query_pre_attn_scalar, sliding-window local layers with their own RoPE
base, and the final logit softcapping. Absent fields take Gemma3TextConfig's defaults (published
multimodal configs give only a few fields of their text_config)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .fields import Fields
from .model_checks import read_rope_scaling

# transformers' Gemma3TextConfig defaults of the fields that size the network.
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131_072,
}
LAYER_TYPES = ("full_attention", "sliding_attention")
SLIDING_WINDOW_PATTERN = 6  # Gemma3TextConfig: every 6th layer is global where layer_types is absent


def with_gemma3_defaults(data: Mapping) -> dict:
    """`data` with Gemma3TextConfig's default for each absent (or null) sizing field."""
    return {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in data.items() if v is not None}}


def _layer_types(f: Fields, layers: int) -> tuple[str, ...]:
    if f.has("layer_types"):
        types = f.data["layer_types"]
        if not isinstance(types, list) or len(types) != layers or any(t not in LAYER_TYPES for t in types):
            raise f.error("layer_types", f"must be a list of {layers} entries, each one of {', '.join(LAYER_TYPES)}",
                          types)
        return tuple(types)
    pattern = f.int("sliding_window_pattern", SLIDING_WINDOW_PATTERN)
    return tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers))


def _rope(f: Fields) -> tuple[float, Any, float]:
    """(global RoPE base, global scaling, local RoPE base). transformers 5 writes
    rope_parameters per layer type; older configs rope_theta, rope_scaling, rope_local_base_freq."""
    rp = f.mapping("rope_parameters")
    if rp is not None and any(isinstance(v, Mapping) for v in rp.values()):
        def part(key: str) -> Fields:
            sub = rp.get(key) or {}
            if not isinstance(sub, Mapping):
                raise f.error(f"rope_parameters.{key}", "must be a mapping", sub)
            return Fields(sub, f.file, f"{f.prefix}rope_parameters.{key}.", null_is_missing=True)

        full, local = part("full_attention"), part("sliding_attention")
        if read_rope_scaling(local, strict=False) is not None:
            raise local.error("rope_type", "unsupported for the sliding layers; expected default", local.data.get("rope_type"))
        return (full.float("rope_theta", 1e6), read_rope_scaling(full, strict=False),
                local.float("rope_theta", 1e4))
    src = "rope_parameters" if rp is not None else "rope_scaling"
    rope = f.mapping(src)
    rf = Fields(rope, f.file, f"{f.prefix}{src}.", null_is_missing=True) if rope is not None else None
    theta_f = rf if rf is not None and rf.has("rope_theta") else f
    scaling = read_rope_scaling(rf, strict=False) if rf is not None else None
    return theta_f.float("rope_theta", 1e6), scaling, f.float("rope_local_base_freq", 1e4)


def gemma3_fields(f: Fields, layers: int) -> dict[str, Any]:
    """ModelConfig's Gemma 3 fields (and rope_theta, rope_scaling) from a gemma3_text config."""
    if f.bool("use_bidirectional_attention", False):
        raise f.error("use_bidirectional_attention", "unsupported; a decoder attends causally", True)
    if f.has("attn_logit_softcapping"):
        # transformers' Gemma 3 attention does not apply it; published configs leave it null.
        raise f.error("attn_logit_softcapping", "unsupported; expected null (Gemma 3 attention has no softcap)",
                      f.data["attn_logit_softcapping"])
    theta, scaling, local_theta = _rope(f)
    return dict(
        rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta,
        qk_norm=True, norm_offset=1.0, sandwich_norm=True, embed_scale=True, hidden_act="gelu_tanh",
        query_pre_attn_scalar=f.float("query_pre_attn_scalar", 256.0),
        sliding_window=f.int("sliding_window", 4096), layer_types=_layer_types(f, layers),
        final_logit_softcapping=f.float("final_logit_softcapping", None),
    )
