"""HF transformers oracles for tests: map a ModelConfig to an HF config, build a random model.

Works with transformers 4.x (rope_theta + rope_scaling) and 5.x (rope_parameters).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ada_mk.config.model import ModelConfig


def hf_config_from_model(model: ModelConfig, attn_implementation: str = "eager") -> Any:
    """The HF PretrainedConfig equivalent to `model` (full attention, no dropout): the one the
    benchmark harness builds its baselines from. HF hard-codes the qkv bias per family (qwen2
    always, mistral never; llama's attention_bias would also bias o_proj, which the IR does not
    model), so other combinations raise ValueError."""
    from ada_mk.bench.baselines import hf_config

    return hf_config(model, attn_implementation)


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
