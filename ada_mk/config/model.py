"""The model half of a configuration: the hyper-parameters of one Llama-family decoder.

Field names mirror HF `config.json` so that a published config reads across directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: "llama3" (wavelength-dependent) or "linear" (every frequency
    divided by `factor`, Gemma 3's global layers); "default" (or no scaling) leaves them as
    theta ** (-2i/d)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    name: str
    model_type: str  # "llama", "mistral", "qwen2", "qwen3" or "gemma3_text": decides defaults such as the qkv bias
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (qwen2)
    rope_scaling: RopeScaling | None = None
    # The fields below change the network beyond the Llama shape; at their defaults a model is
    # Llama-shaped and `to_dict` leaves them out (so plans and their hashes stay as they were).
    qk_norm: bool = False  # per-head RMSNorm of q and k (a weight of head_dim each) before RoPE (qwen3, gemma3)
    norm_offset: float = 0.0  # RMSNorms scale by (norm_offset + weight): 1.0 for gemma3
    sandwich_norm: bool = False  # norms after attention and around the MLP as well (gemma3's four per block)
    embed_scale: bool = False  # embeddings multiplied by sqrt(hidden_size), rounded to bf16 (gemma3)
    hidden_act: str = "silu"  # the gated MLP's activation: "silu" or "gelu_tanh"
    query_pre_attn_scalar: float | None = None  # attention scale query_pre_attn_scalar ** -0.5 (None: head_dim)
    sliding_window: int | None = None  # window of the "sliding_attention" layers
    layer_types: tuple[str, ...] | None = None  # per layer: "full_attention" or "sliding_attention"
    rope_local_theta: float | None = None  # RoPE base of the sliding layers (unscaled; None: rope_theta)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads that share one K/V head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def attn_scale(self) -> float:
        """The factor on q.k: query_pre_attn_scalar ** -0.5 where set, else head_dim ** -0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends over a sliding window of `sliding_window` positions."""
        return (self.sliding_window is not None and self.layer_types is not None
                and self.layer_types[layer] == "sliding_attention")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("rope_scaling", *EXTRA_DEFAULTS)}
        d["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling.__dict__)
        for k, default in EXTRA_DEFAULTS.items():
            v = getattr(self, k)
            if v != default:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d


# The fields beyond the Llama shape, at the values that leave a model Llama-shaped.
EXTRA_DEFAULTS: dict[str, Any] = {
    "qk_norm": False, "norm_offset": 0.0, "sandwich_norm": False, "embed_scale": False, "hidden_act": "silu",
    "query_pre_attn_scalar": None, "sliding_window": None, "layer_types": None, "rope_local_theta": None,
    "final_logit_softcapping": None,
}
