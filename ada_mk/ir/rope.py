"""RoPE inverse frequencies, computed exactly as HF transformers does (in float32).

Mirrors `LlamaRotaryEmbedding.compute_default_rope_parameters` and
`modeling_rope_utils._compute_llama3_parameters`; the GPU code generator bakes these values
into its tables, so they must match HF bit-for-bit as far as float32 allows.
"""
from __future__ import annotations

import math

import numpy as np

from ..config.model import ModelConfig, RopeScaling


def rope_inv_freq_from(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """inv_freq (head_dim/2,) float32 for the given base and scaling ("default", "linear" or "llama3")."""
    # HF: 1 / base ** (arange(0, dim, 2).float() / dim), all in float32. The power is taken in
    # double and rounded once to float32 (correctly rounded), not with np.power: numpy's float32
    # power follows the CPU's SIMD path (AVX-512 rounds differently from AVX2, by one ulp), and these
    # values are baked into the generated source, which must not depend on the machine that made it.
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    base = float(np.float32(theta))
    power = np.array([math.pow(base, float(e)) for e in exponent]).astype(np.float32)
    inv_freq = (np.float32(1.0) / power).astype(np.float32)
    if scaling is None or scaling.rope_type == "default":
        return inv_freq
    if scaling.rope_type == "linear":  # HF _compute_linear_scaling_rope_parameters
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    if scaling.rope_type != "llama3":
        raise NotImplementedError(f"rope_type {scaling.rope_type!r}")

    factor = scaling.factor
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
    # Long wavelengths (low frequencies) are slowed down by `factor`; short ones are kept;
    # in between, interpolate smoothly.
    inv = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (np.float32(old_len) / wavelen - np.float32(low)) / np.float32(high - low)
    smoothed = (1 - smooth) * inv / np.float32(factor) + smooth * inv
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, inv).astype(np.float32)


def rope_inv_freq(model: ModelConfig) -> np.ndarray:
    """inv_freq (head_dim/2,) float32 for a model (its full-attention layers)."""
    return rope_inv_freq_from(model.head_dim, model.rope_theta, model.rope_scaling)


def rope_cos_sin(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape (len(positions), head_dim), HF layout: the half-dim angles repeated twice."""
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)
