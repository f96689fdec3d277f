"""The int4 weight-only linear of the compile-int4 baseline, written as gpt-fast writes
WeightOnlyInt4Linear (and torchao's int4 weight-only mode): torch's tinygemm kernels, the weight
packed once by `torch.ops.aten._convert_weight_to_int4pack` and multiplied by
`torch.ops.aten._weight_int4pack_mm` inside the compiled graph, group 128, a bf16 scale and zero per
group with W = (q - 8) * scale + zero. On the CPU the same module runs torch's CPU twins
(`_convert_weight_to_int4pack_for_cpu`, `_weight_int4pack_mm_for_cpu`: the same function), so the
tests run it here; the timed baseline runs on CUDA.

The rounding rule is gpt-fast's `group_quantize_tensor` (round to nearest per group of 128 input
columns: scale = max(max - min, 1e-6) / 15 and zero = min + 8 * scale, both bf16; q = clamp(round((w -
(zero - 8 * scale)) / scale), 0, 15)). `dequantized` gives what the module computes, by multiplying
the identity through the packed weight, so the harness's HF reference runs the very weights timed.
"""
from __future__ import annotations

import math

import torch
import torch._dynamo  # noqa: F401 - mark_static_address
import torch.nn as nn

GROUP = 128  # input columns per scale and zero (gpt-fast's default)
INNER_K_TILES = 8  # tinygemm's tiling of K: K must be a multiple of INNER_K_TILES * 16
BITS_ZERO = 8  # tinygemm's codes are centred: W = (q - 8) * scale + zero


def quantize_groups(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [N, K] int32 codes 0..15, scales, zeros bf16 [N, K // group]) of a float [N, K] matrix by
    gpt-fast's rule (module docstring). ValueError for a shape tinygemm does not take."""
    if w.ndim != 2:
        raise ValueError(f"int4 weight-only: expected a 2-D weight matrix, not shape {tuple(w.shape)}")
    n, k = w.shape
    kmul = math.lcm(group, INNER_K_TILES * 16)
    if k % kmul or n % 8:
        raise ValueError(f"int4 weight-only (tinygemm): a [{n}, {k}] matrix needs K a multiple of {kmul} and N a"
                         f" multiple of 8")
    g = w.float().reshape(n, k // group, group)
    if not torch.isfinite(g).all():
        raise ValueError("int4 weight-only: the weights hold NaN or infinity")
    lo, hi = g.amin(2), g.amax(2)
    scales = ((hi - lo).clamp(min=1e-6) / 15).to(torch.bfloat16)
    zeros = (lo + scales.float() * BITS_ZERO).to(torch.bfloat16)
    low = zeros.float() - scales.float() * BITS_ZERO
    q = ((g - low[..., None]) / scales.float()[..., None]).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    return q, scales, zeros


class Int4WeightOnlyLinear(nn.Module):
    """An int4 weight-only linear without bias: tinygemm's packed weight and its [K // group, N, 2]
    bf16 scales and zeros. The forward is one _weight_int4pack_mm (bf16 activations)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int = GROUP):
        super().__init__()
        n, k = q.shape
        self.out_features, self.in_features, self.group = n, k, group
        self.cpu = q.device.type == "cpu"
        if self.cpu:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), INNER_K_TILES)
        else:
            nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # gpt-fast's order
            packed = torch.ops.aten._convert_weight_to_int4pack(nibbles.contiguous(), INNER_K_TILES)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", torch.stack([scales, zeros], 2).transpose(0, 1).contiguous())
        for t in (self.weight, self.scales_and_zeros):  # fixed addresses for CUDA graphs
            torch._dynamo.mark_static_address(t)

    @classmethod
    def quantize(cls, w: torch.Tensor, fmt: str = "int4") -> Int4WeightOnlyLinear:
        """The module for float weights `w` [out, in] (quantize_groups' rounding)."""
        assert fmt == "int4", fmt
        return cls(*quantize_groups(w))

    @property
    def fmt(self) -> str:
        return "int4"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.cpu:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.weight, self.group, self.scales_and_zeros)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    @torch.no_grad()
    def dequantized(self, rows: int = 1024) -> torch.Tensor:
        """The float32 [out, in] weights this module computes with: the identity multiplied through
        it, `rows` input columns at a time (exact: one product per output, rounded to bf16 as the
        forward rounds)."""
        out = torch.empty(self.out_features, self.in_features, dtype=torch.float32, device=self.weight.device)
        for c in range(0, self.in_features, rows):
            r = min(rows, self.in_features - c)
            eye = torch.zeros(r, self.in_features, dtype=torch.bfloat16, device=self.weight.device)
            eye[torch.arange(r), c + torch.arange(r)] = 1
            out[:, c:c + r] = self.forward(eye).float().T
        return out

    def extra_repr(self) -> str:
        return f"int4 group {self.group}, out={self.out_features}, in={self.in_features}"
