"""HF transformers oracles for tests: map a ModelConfig to an HF config, build a random model.

Works with transformers 4.x (rope_theta + rope_scaling) and 5.x (rope_parameters).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ada_mk.config.model import ModelConfig


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def hf_config_from_model(model: ModelConfig, attn_implementation: str = "eager") -> Any:
    """The HF PretrainedConfig equivalent to `model` (full attention, no dropout)."""
    from transformers import AutoConfig

    m = model
    if m.model_type not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"model_type {m.model_type!r}")
    # HF hard-codes the qkv bias per family: qwen2 always has it, mistral never; llama's
    # attention_bias would also bias o_proj, which the IR does not model.
    if (m.model_type == "qwen2") != m.attention_bias:
        raise ValueError(f"{m.model_type} with attention_bias={m.attention_bias} has no HF equivalent")

    kw: dict[str, Any] = dict(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
        rms_norm_eps=m.rms_norm_eps, max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=m.tie_word_embeddings, hidden_act="silu",
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if m.model_type == "mistral":
        kw["sliding_window"] = None
    if m.model_type == "qwen2":
        kw["use_sliding_window"] = False

    scaling = None
    if m.rope_scaling is not None and m.rope_scaling.rope_type != "default":
        scaling = dict(m.rope_scaling.__dict__)
    if _transformers_major() >= 5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": m.rope_theta, **(scaling or {})}
    else:
        kw["rope_theta"] = m.rope_theta
        kw["rope_scaling"] = scaling
    cfg = AutoConfig.for_model(m.model_type, **kw)
    cfg._attn_implementation = attn_implementation
    return cfg


def random_hf_model(model: ModelConfig, seed: int, std: float = 0.1) -> Any:
    """An HF *ForCausalLM in float32 on the CPU, eval mode, with random weights drawn from `seed`.

    Matrices ~ N(0, std^2) keep activations O(1) at small widths; norm weights ~ 1 + N(0, 0.1^2)
    and biases ~ N(0, 0.1^2) so that neither is a no-op that a buggy kernel could get away with.
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config_from_model(model)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # tied weights appear once here
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)
    return hf.eval()


def hf_weights(hf: Any) -> dict[str, np.ndarray]:
    """The state dict as float32 NumPy arrays, keyed by HF's names."""
    return {k: v.detach().float().cpu().numpy() for k, v in hf.state_dict().items()}


def hf_logits(hf: Any, tokens: list[int] | np.ndarray) -> np.ndarray:
    """Logits (T, V) of one sequence, recomputed from scratch (no cache, no padding)."""
    import torch

    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None]
    with torch.no_grad():
        return hf(input_ids=ids, use_cache=False).logits[0].float().numpy()
