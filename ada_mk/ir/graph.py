"""A small op-graph IR of ONE decode step of a Llama-family model.

Every activation carries the batch B as its leading dim. Ops name their tensors by string; the
Graph owns the tensors and binds them into each op, so `op.flops()` / `op.bytes_read()` work
without arguments. Byte counts model what a step must move through DRAM:

* weights are read once per step, except the embedding lookup, which reads only B rows
  (a tied LM head then reads the same matrix in full, so it is counted once, by the LM head);
* attention reads `context` cached positions of K and V per sequence; KVAppend writes one;
* activations are counted as written by their producer and read by each consumer (small).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

from ..config.model import RopeScaling

DTYPE_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "fp8": 1, "int8": 1, "int4": 0.5}
# Quantized weight dtypes: 8-bit codes (a byte each) with float32 scales, and int4 (half a byte a
# code) with a bf16 (scale, offset) pair per group; 4 bytes a group either way (Tensor.group).
QUANTIZED = ("fp8", "int8", "int4")
ROLES = ("weight", "activation", "kv_cache", "input", "output")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "bf16", "f32", "i32"; quantized weights "fp8", "int8" or "int4"
    role: str  # one of ROLES
    group: int = 0  # quantized weights: input columns per scale, 0 for one scale per row

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def scales(self) -> int:
        """Scales of a quantized weight (4 bytes each: a float32, or int4's bf16 pair): one per row,
        or per `group` columns of a row."""
        if self.dtype not in QUANTIZED:
            return 0
        rows, cols = prod(self.shape[:-1]), self.shape[-1]
        return rows * (-(-cols // self.group) if self.group else 1)

    @property
    def nbytes(self) -> int:
        """Its bytes: the elements (int4: two a byte), and a quantized weight's scales."""
        codes = -(-self.numel // 2) if self.dtype == "int4" else self.numel * DTYPE_BYTES[self.dtype]
        return codes + 4 * self.scales


# --------------------------------------------------------------------------------------- ops
@dataclass
class Op:
    """Base op. Subclasses override `flops` and, where not every byte of a tensor is touched,
    `reads` / `writes` (lists of (tensor, bytes))."""

    name: str
    layer: int | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Bound by Graph.add so that cost methods need no arguments.
    tensors: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def t(self, name: str) -> Tensor:
        return self.tensors[name]

    @property
    def ins(self) -> list[Tensor]:
        return [self.tensors[n] for n in self.inputs]

    @property
    def outs(self) -> list[Tensor]:
        return [self.tensors[n] for n in self.outputs]

    def reads(self) -> list[tuple[Tensor, int]]:
        return [(t, t.nbytes) for t in self.ins]

    def writes(self) -> list[tuple[Tensor, int]]:
        return [(t, t.nbytes) for t in self.outs]

    def bytes_read(self) -> int:
        return sum(b for _, b in self.reads())

    def bytes_written(self) -> int:
        return sum(b for _, b in self.writes())

    def flops(self) -> int:
        return 0

    def attrs(self) -> dict[str, Any]:
        """Op-specific attributes (for dump / JSON / code generation)."""
        return {}


@dataclass
class Embedding(Op):
    """inputs: (tokens (B,), table (V, H)); outputs: (h (B, H),). Reads only the B rows used.
    h = table[tokens] * scale where `scale` is set (Gemma 3: sqrt(H), rounded to bf16)."""

    scale: float | None = None

    def reads(self) -> list[tuple[Tensor, int]]:
        tokens, table = self.ins
        row = table.shape[1] * DTYPE_BYTES[table.dtype]
        return [(tokens, tokens.nbytes), (table, tokens.numel * row)]

    def attrs(self) -> dict[str, Any]:
        return {} if self.scale is None else {"scale": self.scale}


@dataclass
class RMSNorm(Op):
    """inputs: (x (B, H), weight (H,)); outputs: (y,). y = x * rsqrt(mean(x^2) + eps) * (offset + w)
    (offset 1 for Gemma's norms, else 0)."""

    eps: float = 1e-6
    offset: float = 0.0

    def flops(self) -> int:
        return 4 * self.ins[0].numel  # square, sum, scale, weight

    def attrs(self) -> dict[str, Any]:
        return {"eps": self.eps, **({"offset": self.offset} if self.offset else {})}


@dataclass
class HeadRMSNorm(Op):
    """inputs: (q (B, nh*d), k (B, nkv*d), q_weight (d,), k_weight (d,)); outputs: (q_n, k_n).
    RMSNorm of every head of q and of k on its own (Qwen3's and Gemma 3's q_norm / k_norm),
    before RoPE."""

    head_dim: int = 128
    eps: float = 1e-6
    offset: float = 0.0

    def flops(self) -> int:
        return 4 * (self.ins[0].numel + self.ins[1].numel)

    def attrs(self) -> dict[str, Any]:
        return {"head_dim": self.head_dim, "eps": self.eps, **({"offset": self.offset} if self.offset else {})}


@dataclass
class Linear(Op):
    """inputs: (x (B, K), weight (N, K)[, bias (N,)]); outputs: (y (B, N),). y = x @ W^T + b."""

    def flops(self) -> int:
        x, w = self.ins[0], self.ins[1]
        f = 2 * x.shape[0] * w.shape[0] * w.shape[1]
        return f + (x.shape[0] * w.shape[0] if len(self.inputs) > 2 else 0)


@dataclass
class Rope(Op):
    """inputs: (q (B, nh*d), k (B, nkv*d), positions (B,)); outputs: (q_rot, k_rot).
    HF's rotate_half convention; frequencies from `rope_inv_freq_from(head_dim, theta, scaling)`."""

    head_dim: int = 128
    theta: float = 10000.0
    scaling: RopeScaling | None = None

    def flops(self) -> int:
        q, k = self.ins[0], self.ins[1]
        return 3 * (q.numel + k.numel)  # x*cos + rot(x)*sin

    def attrs(self) -> dict[str, Any]:
        sc = None if self.scaling is None else dict(self.scaling.__dict__)
        return {"head_dim": self.head_dim, "theta": self.theta, "scaling": sc}


@dataclass
class KVAppend(Op):
    """inputs: (k_rot (B, nkv*d), v (B, nkv*d), positions (B,));
    outputs: (k_cache, v_cache), each (B, nkv, max_context, d): writes one position per sequence."""

    def writes(self) -> list[tuple[Tensor, int]]:
        k = self.ins[0]
        return [(c, k.numel * DTYPE_BYTES[c.dtype]) for c in self.outs]


@dataclass
class DecodeAttention(Op):
    """inputs: (q_rot (B, nh*d), k_cache, v_cache, positions (B,)); outputs: (attn_out (B, nh*d),).
    GQA: query head h reads K/V head h // group_size. Causal over positions 0..pos, which the
    cost model takes to be `context` positions (the new one included)."""

    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    context: int = 512
    scale: float | None = None  # on q.k; None: head_dim ** -0.5
    window: int | None = None  # sliding window: the last `window` positions (the new one included)

    @property
    def positions(self) -> int:
        """Cached positions one query reads: `context`, or the window where shorter."""
        return self.context if self.window is None else min(self.context, self.window)

    def reads(self) -> list[tuple[Tensor, int]]:
        q, kc, vc, pos = self.ins
        b = q.shape[0]
        per_cache = b * self.num_kv_heads * self.positions * self.head_dim * DTYPE_BYTES[kc.dtype]
        return [(q, q.nbytes), (kc, per_cache), (vc, per_cache), (pos, pos.nbytes)]

    def flops(self) -> int:
        b = self.ins[0].shape[0]
        # QK^T and PV (2 flops per MAC each) plus ~5 per score for the softmax.
        return b * self.num_heads * self.positions * (4 * self.head_dim + 5)

    def attrs(self) -> dict[str, Any]:
        extra = {} if self.window is None else {"window": self.window}
        return {"num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
                "head_dim": self.head_dim, "context": self.context,
                "scale": self.head_dim ** -0.5 if self.scale is None else self.scale, **extra}


@dataclass
class ResidualAdd(Op):
    """inputs: (a, b); outputs: (a + b,)."""

    def flops(self) -> int:
        return self.outs[0].numel


@dataclass
class SiluMul(Op):
    """inputs: (gate, up); outputs: (silu(gate) * up,)."""

    def flops(self) -> int:
        return 5 * self.outs[0].numel  # exp, add, div (silu), mul, mul


@dataclass
class GeluTanhMul(Op):
    """inputs: (gate, up); outputs: (gelu_tanh(gate) * up,) (Gemma's GeGLU, GELU's tanh form)."""

    def flops(self) -> int:
        return 9 * self.outs[0].numel


@dataclass
class Softcap(Op):
    """inputs: (x,); outputs: (cap * tanh(x / cap),) (Gemma's final logit softcapping)."""

    cap: float = 30.0

    def flops(self) -> int:
        return 3 * self.outs[0].numel

    def attrs(self) -> dict[str, Any]:
        return {"cap": self.cap}


@dataclass
class Argmax(Op):
    """inputs: (logits (B, V),); outputs: (next_token (B,),). First max wins on ties."""

    def flops(self) -> int:
        return self.ins[0].numel


# ------------------------------------------------------------------------------------ graph
@dataclass
class Graph:
    model_name: str
    batch: int
    context: int
    dtype: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    weights_format: str = "bf16"  # the linear weights' format (DeployConfig.weights); the embedding stays bf16
    weights_group: int = 0  # 8-bit: input columns per scale, 0 per row (DeployConfig.weights_group)

    def tensor(self, name: str, shape: tuple[int, ...], dtype: str, role: str, group: int = 0) -> str:
        assert role in ROLES and dtype in DTYPE_BYTES, (role, dtype)
        old = self.tensors.get(name)
        t = Tensor(name, tuple(shape), dtype, role, group)
        assert old is None or old == t, f"tensor {name} redefined: {old} vs {t}"
        self.tensors[name] = t
        return name

    def add(self, op: Op) -> Op:
        for n in (*op.inputs, *op.outputs):
            assert n in self.tensors, f"{op.name}: unknown tensor {n}"
        op.tensors = self.tensors
        self.ops.append(op)
        return op

    # ---- queries
    def weights(self) -> list[Tensor]:
        """Distinct weight tensors, in first-use order (a tied LM head adds nothing)."""
        seen: dict[str, Tensor] = {}
        for op in self.ops:
            for t in op.ins:
                if t.role == "weight":
                    seen.setdefault(t.name, t)
        return list(seen.values())

    def layer_ops(self, layer: int) -> list[Op]:
        return [op for op in self.ops if op.layer == layer]

    def bytes_by_role(self) -> dict[str, int]:
        """Bytes moved per step, split by the role of the tensor read or written."""
        out = {r: 0 for r in ROLES}
        for op in self.ops:
            for t, b in op.reads() + op.writes():
                out[t.role] += b
        return out

    def weight_bytes(self) -> int:
        return self.bytes_by_role()["weight"]

    def kv_bytes(self) -> int:
        return self.bytes_by_role()["kv_cache"]

    def total_bytes(self) -> int:
        """Everything a decode step moves: weights + KV read + KV written + activations."""
        return sum(op.bytes_read() + op.bytes_written() for op in self.ops)

    def total_flops(self) -> int:
        return sum(op.flops() for op in self.ops)

    # ---- output
    def dump(self) -> str:
        def shapes(ts: list[Tensor]) -> str:
            return ",".join("x".join(map(str, t.shape)) for t in ts)

        head = f"{'op':<20} {'kind':<16} {'inputs -> outputs':<52} {'MFLOP':>10} {'MB':>10}"
        lines = [f"# {self.model_name}: decode step, batch {self.batch}, context {self.context}, "
                 f"{self.dtype}{self.weights_note()}", head, "-" * len(head)]
        for op in self.ops:
            io = f"{shapes(op.ins)} -> {shapes(op.outs)}"
            mb = (op.bytes_read() + op.bytes_written()) / 1e6
            lines.append(f"{op.name:<20} {op.kind:<16} {io:<52} {op.flops() / 1e6:>10.3f} {mb:>10.3f}")
        r = self.bytes_by_role()
        lines.append("-" * len(head))
        lines.append(
            f"total: {len(self.ops)} ops, {self.total_flops() / 1e9:.3f} GFLOP, "
            f"{self.total_bytes() / 1e9:.4f} GB per step (weights {r['weight'] / 1e9:.4f} GB, "
            f"KV {r['kv_cache'] / 1e9:.4f} GB, activations+io "
            f"{(r['activation'] + r['input'] + r['output']) / 1e6:.3f} MB)")
        return "\n".join(lines)

    def weights_note(self) -> str:
        """', <format> weights (...)' for quantized linear weights, else ''."""
        if self.weights_format not in QUANTIZED:
            return ""
        if self.weights_format == "int4":
            scales = f"a bf16 scale and offset per {self.weights_group} columns"
        else:
            scales = (f"a float32 scale per {self.weights_group} columns" if self.weights_group
                      else "a float32 scale per row")
        return f", {self.weights_format} linear weights ({scales}; embedding bf16)"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "batch": self.batch, "context": self.context,
            "dtype": self.dtype,
            **({"weights": self.weights_format, "weights_group": self.weights_group}
               if self.weights_format in QUANTIZED else {}),
            "tensors": [dict(name=t.name, shape=list(t.shape), dtype=t.dtype, role=t.role,
                             **({"group": t.group} if t.dtype in QUANTIZED else {}))
                        for t in self.tensors.values()],
            "ops": [dict(name=op.name, kind=op.kind, layer=op.layer, inputs=list(op.inputs),
                         outputs=list(op.outputs), attrs=op.attrs(), flops=op.flops(),
                         bytes_read=op.bytes_read(), bytes_written=op.bytes_written())
                    for op in self.ops],
            "totals": {"flops": self.total_flops(), "bytes": self.total_bytes(),
                       "bytes_by_role": self.bytes_by_role()},
        }

