"""What both configuration formats check of a model: a supported model type, a RoPE scaling the
kernel implements, and shapes the kernel's vector loads and head layout take."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .fields import Fields
from .model import RopeScaling

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
# Families only the reference executor runs so far: the kernel has no sliding window, no (1 + w)
# norms, no GELU and no logit softcapping (ada_mk.search.planner refuses them).
REFERENCE_ONLY_MODEL_TYPES = ("gemma3_text",)
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
# hidden_size, intermediate_size and head_dim are read with 16-byte vector loads (8 bf16).
VECTOR_ELEMS = 8

SIZE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)
ROPE_KEYS = (
    "rope_type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def model_type_of(f: Fields) -> str:
    model_type = f.str("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise f.error("model_type", f"unsupported model_type; expected one of {', '.join(SUPPORTED_MODEL_TYPES)}", model_type)
    return model_type


def read_rope_scaling(f: Fields, *, strict: bool) -> RopeScaling | None:
    """RoPE scaling from a mapping in HF's layout. Old configs name the kind `type`, newer ones
    `rope_type`; "default" means no scaling."""
    if strict:
        f.reject_unknown((*ROPE_KEYS, "type"))
    kinds = {k: f.data[k] for k in ("rope_type", "type") if f.has(k)}
    if len(kinds) == 2 and kinds["rope_type"] != kinds["type"]:
        raise f.error("type", f"disagrees with rope_type ({kinds['rope_type']!r})", kinds["type"])
    if not kinds:
        if strict:
            raise f.error("rope_type", f"missing; expected one of {', '.join(SUPPORTED_ROPE_TYPES)}")
        return None  # HF: a rope dict without a kind is the default RoPE
    key = "rope_type" if "rope_type" in kinds else "type"
    kind = f.str(key)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise f.error(key, f"unsupported rope type; expected one of {', '.join(SUPPORTED_ROPE_TYPES)}", kind)
    if kind == "default":
        return None
    if kind == "linear":  # positions divided by `factor` (Gemma 3's global layers)
        factor = f.float("factor")
        if factor < 1.0:
            raise f.error("factor", "must be >= 1 for linear scaling", f.data["factor"])
        return RopeScaling(rope_type="linear", factor=factor)
    if f.has("partial_rotary_factor") and f.data["partial_rotary_factor"] != 1.0:
        raise f.error("partial_rotary_factor", "unsupported; RoPE is applied to the whole head_dim", f.data["partial_rotary_factor"])
    # llama3: every parameter must be given (as transformers requires); guessing would be silent.
    factor = f.float("factor")
    if factor < 1.0:
        raise f.error("factor", "must be >= 1 for llama3 scaling", f.data["factor"])
    low = f.float("low_freq_factor")
    high = f.float("high_freq_factor")
    if high <= low:
        raise f.error("high_freq_factor", f"must be > low_freq_factor ({low:g})", f.data["high_freq_factor"])
    original = f.int("original_max_position_embeddings")
    return RopeScaling(
        rope_type="llama3",
        factor=factor,
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=original,
    )


def shape_checks(f: Fields, m: dict[str, Any], head_dim_explicit: bool) -> int:
    """Checks shared by both formats; returns head_dim (derived when not given)."""
    hidden, heads, kv = m["hidden_size"], m["num_attention_heads"], m["num_key_value_heads"]
    if head_dim_explicit:
        # Published configs may have head_dim * heads != hidden_size (the q/o projections are then
        # not square); that is fine as long as head_dim is stated.
        head_dim = f.int("head_dim")
    else:
        if hidden % heads:
            raise f.error("num_attention_heads", f"must divide hidden_size ({hidden}) when head_dim is not given", heads)
        head_dim = hidden // heads
    if heads % kv:
        raise f.error("num_key_value_heads", f"must divide num_attention_heads ({heads})", kv)
    if head_dim % VECTOR_ELEMS:
        what = "head_dim" if head_dim_explicit else "head_dim (hidden_size / num_attention_heads)"
        raise ConfigError(
            f"must be even and a multiple of {VECTOR_ELEMS} (RoPE pairs, 16-byte vector loads)",
            file=f.file, field=f.field("head_dim") if head_dim_explicit else what, value=head_dim,
        )
    for key in ("hidden_size", "intermediate_size"):
        if m[key] % VECTOR_ELEMS:
            raise f.error(key, f"must be a multiple of {VECTOR_ELEMS} (16-byte vector loads of bf16)", m[key])
    return head_dim
