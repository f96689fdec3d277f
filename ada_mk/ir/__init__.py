"""The op-graph IR of one decode step, and its NumPy reference executor."""
from .build import build_decode_graph
from .graph import (DTYPE_BYTES, Argmax, DecodeAttention, Embedding, Graph, KVAppend, Linear, Op,
                    ResidualAdd, RMSNorm, Rope, SiluMul, Tensor)
from .reference import ReferenceExecutor
from .rope import rope_cos_sin, rope_inv_freq, rope_inv_freq_from

__all__ = [
    "DTYPE_BYTES", "Argmax", "DecodeAttention", "Embedding", "Graph", "KVAppend", "Linear", "Op",
    "ResidualAdd", "RMSNorm", "Rope", "SiluMul", "Tensor", "build_decode_graph",
    "ReferenceExecutor", "rope_cos_sin", "rope_inv_freq", "rope_inv_freq_from",
]
