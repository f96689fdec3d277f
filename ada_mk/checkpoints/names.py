"""The tensors a model needs, by HF name and shape, and the check of a checkpoint against them."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..config.model import ModelConfig
from ..quant.formats import SCALE_TENSOR
from .errors import CheckpointError

# Tensors some checkpoints carry that the network does not use: RoPE tables (recomputed from the
# config), and llama.cpp's precomputed RoPE factors.
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope_freqs\.weight$")
# Scale tensors of quantized checkpoints (X.weight_scale, X.weight_scale_inv, X.input_scale, ...):
# not tensors of the network but part of their weight, paired with it by the quantized readers.
QUANT_SCALES = SCALE_TENSOR


def expected_weights(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor the decode graph reads (a tied LM head is the embedding)."""
    from ..ir.build import build_decode_graph

    g = build_decode_graph(model, None, context=1, batch=1, max_context=1)
    return {t.name: tuple(t.shape) for t in g.weights()}


def check_weights(model: ModelConfig, shapes: Mapping[str, Sequence[int]], source: str) -> list[str]:
    """Raise CheckpointError unless `shapes` (name -> shape) holds exactly the model's tensors.

    A tied model may also carry `lm_head.weight` (some exporters write it); tensors matching
    IGNORED or QUANT_SCALES are allowed. Returns the names to drop (ignored tensors)."""
    want = expected_weights(model)
    drop = [n for n in shapes if IGNORED.search(n) or QUANT_SCALES.search(n)]
    if model.tie_word_embeddings and "lm_head.weight" in shapes:
        drop.append("lm_head.weight")
        if tuple(shapes["lm_head.weight"]) != want["model.embed_tokens.weight"]:
            raise CheckpointError(f"{source}: tensor 'lm_head.weight' has shape {tuple(shapes['lm_head.weight'])}; "
                                  f"expected {want['model.embed_tokens.weight']}")
    missing = [n for n in want if n not in shapes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: tensor {missing[0]!r} is missing{more}; the model "
                              f"({model.num_hidden_layers} layers, {model.model_type}) needs it")
    extra = [n for n in shapes if n not in want and n not in drop]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r}{more}: not part of the model "
                              f"({model.num_hidden_layers} layers, {model.model_type}); wrong config?")
    for n, shape in want.items():
        got = tuple(int(s) for s in shapes[n])
        if got != shape:
            raise CheckpointError(f"{source}: tensor {n!r} has shape {got}; expected {shape}")
    return drop
