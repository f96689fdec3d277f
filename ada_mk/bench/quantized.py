"""8-bit weight-only linears for the quantized PyTorch baselines (compile-int8, compile-fp8), written
as gpt-fast writes WeightOnlyInt8Linear: the 8-bit weight [out, in] and a float32 scale per output
row stay in memory, and the forward dequantizes inside the compiled graph,

    y = F.linear(x, weight.to(x.dtype)) * scales    (+ bias)

so torch.compile fuses the conversion into the matmul and the step reads 1 byte per weight. Plain
torch (no torchao), so the same code runs on the CPU (tests) and on the GPU machine.

The rounding rule is ada_mk.quant's (`quantize_int8(w, group=K)`, `quantize_fp8(w)`: round to
nearest per output row, scale = amax / 127 or amax / 448, a zero row gets scale 0). `quantize_rows`
is its torch form, bit for bit (tests/test_bench_quantized.py checks it against ada_mk.quant), so
that an 8B model's weights quantize on the GPU in milliseconds rather than in NumPy on the host.

`load_dequantized` writes a quantized decoder's weights, dequantized, into the HF model the harness
checks it against: the reference computes the same function as the quantized system.
"""
from __future__ import annotations

from typing import Any

import torch
import torch._dynamo  # noqa: F401 - mark_static_address
import torch.nn as nn
import torch.nn.functional as F

from ..quant.e4m3 import E4M3_MAX
from ..quant.quantize import INT8_MAX

FORMATS = {"int8": (torch.int8, float(INT8_MAX)), "fp8": (torch.float8_e4m3fn, E4M3_MAX)}


def quantize_rows(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, K] int8 or float8_e4m3fn, scales float32 [N]) of a weight matrix, per output row:
    scale = amax / qmax in float32, q = round-to-nearest-even of w / scale (int8 clamped to
    [-127, 127]; fp8 saturating at +-448). Identical to ada_mk.quant.quantize_int8(w, group=K) and
    quantize_fp8(w)."""
    if fmt not in FORMATS:
        raise ValueError(f"quantize_rows: format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if w.ndim != 2:
        raise ValueError(f"quantize_rows: expected a 2-D weight matrix, not shape {tuple(w.shape)}")
    dtype, qmax = FORMATS[fmt]
    wf = w.float()
    if not torch.isfinite(wf).all():
        raise ValueError("quantize_rows: the weights hold NaN or infinity")
    scales = wf.abs().amax(dim=1) / torch.tensor(qmax, dtype=torch.float32, device=w.device)
    x = wf / torch.where(scales == 0, torch.ones_like(scales), scales)[:, None]
    del wf
    if fmt == "int8":
        q = x.round_().clamp_(-qmax, qmax).to(dtype)
    else:
        q = x.clamp_(-qmax, qmax).to(dtype)
    return q, scales


def dequantize_rows(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """W = value(q) x scale as float32 [N, K] (QuantizedMatrix.dequantize's function)."""
    return q.float() * scales[:, None]


class WeightOnlyLinear(nn.Module):
    """An 8-bit weight-only linear without bias: `weight` int8 or float8_e4m3fn [out, in], `scales`
    float32 [out]. The forward dequantizes inside the graph (`linear` adds a bias)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        if weight.dtype not in (torch.int8, torch.float8_e4m3fn) or weight.ndim != 2:
            raise ValueError(f"WeightOnlyLinear: weight must be int8 or float8_e4m3fn [out, in], not "
                             f"{weight.dtype} {tuple(weight.shape)}")
        if scales.dtype != torch.float32 or tuple(scales.shape) != (weight.shape[0],):
            raise ValueError(f"WeightOnlyLinear: scales must be float32 [{weight.shape[0]}], not "
                             f"{scales.dtype} {tuple(scales.shape)}")
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        for t in (self.weight, self.scales):  # fixed addresses for CUDA graphs, like the caches
            torch._dynamo.mark_static_address(t)

    @classmethod
    def quantize(cls, w: torch.Tensor, fmt: str) -> WeightOnlyLinear:
        """The module for float weights `w` [out, in], rounded by `quantize_rows`."""
        q, scales = quantize_rows(w, fmt)
        return cls(q, scales)

    @property
    def fmt(self) -> str:
        return "int8" if self.weight.dtype == torch.int8 else "fp8"

    def dequantized(self) -> torch.Tensor:
        """The float32 weights this module computes with."""
        return dequantize_rows(self.weight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.linear(x, self.weight.to(x.dtype)) * self.scales).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.fmt}, out={self.weight.shape[0]}, in={self.weight.shape[1]}"


def linear(x: torch.Tensor, w: torch.Tensor | nn.Module, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T (+ b) for a float weight tensor or a WeightOnlyLinear (whose output b is added to)."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w, b)
    return w(x) if b is None else w(x) + b


@torch.no_grad()
def load_dequantized(hf: Any, dec: Any) -> None:
    """Write the quantized decoder `dec`'s linear weights, dequantized to HF's dtype, into the HF
    model `hf` (in place; its embedding, norms and biases are the decoder's already). The fused
    q|k|v and gate|up rows are split back into HF's projections. A tied LM head is untied in HF (a
    new lm_head parameter), since the decoder keeps the embedding in bf16 and quantizes the head."""
    m = dec.m
    dtype = next(hf.parameters()).dtype
    q, kv = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim

    def put(param: torch.Tensor, value: torch.Tensor) -> None:
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"load_dequantized: shape {tuple(value.shape)} for {tuple(param.shape)}")
        param.copy_(value.to(dtype))

    for i, (layer, b) in enumerate(zip(hf.model.layers, dec.layers)):
        from .int4_linear import Int4WeightOnlyLinear

        if not isinstance(b.wqkv, (WeightOnlyLinear, Int4WeightOnlyLinear)):
            raise TypeError(f"load_dequantized: layer {i} of the decoder is not quantized")
        wqkv, w13 = b.wqkv.dequantized(), b.w13.dequantized()
        a, mlp = layer.self_attn, layer.mlp
        put(a.q_proj.weight, wqkv[:q])
        put(a.k_proj.weight, wqkv[q:q + kv])
        put(a.v_proj.weight, wqkv[q + kv:])
        del wqkv
        put(a.o_proj.weight, b.wo.dequantized())
        put(mlp.gate_proj.weight, w13[:m.intermediate_size])
        put(mlp.up_proj.weight, w13[m.intermediate_size:])
        del w13
        put(mlp.down_proj.weight, b.w2.dequantized())
    head = dec.head.dequantized().to(dtype)
    if hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr():
        hf.lm_head.weight = nn.Parameter(head, requires_grad=False)
    else:
        put(hf.lm_head.weight, head)


def packed_hf_weights(hf: Any, layout: Any, packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weights a MegaKernel multiplies, by HF parameter name, in HF's dtype: every quantized
    segment (8-bit or int4) of its packed buffer (`layout`, ada_mk.search.layout) dequantized where
    the buffer lives and cut back into HF's projections (q|k|v rows concatenated, gate/up rows
    interleaved); the LM head as "lm_head.weight" even where the model ties it to the embedding.
    Empty for a bf16 plan."""
    from ..runtime.weights import dequantize_segment_torch

    dtype = next(hf.parameters()).dtype
    w = layout.weights
    segs = [(s, 0, 0) for s in w.globals_.values()]
    segs += [(s, i, w.layer_base + i * w.layer_stride) for i in range(w.layers) for s in w.per_layer.values()]
    out: dict[str, torch.Tensor] = {}
    for seg, layer, base in segs:
        if seg.linear is None:
            continue
        mat = dequantize_segment_torch(packed, seg, base).to(dtype)
        names = ["lm_head.weight"] if seg.name == "lm_head" else [s.format(i=layer) for s in seg.sources]
        if seg.interleaved:
            parts = [mat[j::len(names)] for j in range(len(names))]
        else:
            parts = list(mat.split([hf.get_parameter(n).shape[0] for n in names]))
        out.update((n, p.contiguous()) for n, p in zip(names, parts))
        del mat
    return out
