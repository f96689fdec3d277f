"""The model half of a configuration: the hyper-parameters of one Llama-family decoder.

Field names mirror HF `config.json` so that a published config reads across directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. Only the "llama3" type changes the frequencies here;
    "default" (or no scaling) leaves them as theta ** (-2i/d)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    name: str
    model_type: str  # "llama", "mistral" or "qwen2": decides defaults such as the qkv bias
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

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "rope_scaling"}
        d["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling.__dict__)
        return d
