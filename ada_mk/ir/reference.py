"""NumPy float32 executor of the IR: the executable specification the GPU kernel is diffed against.

It walks `graph.ops` in order and interprets each op by kind, so it checks the graph as well as
the maths. Batch and cache size come from the executor, not the graph: ops are batch-agnostic.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..config.model import ModelConfig
from .build import build_decode_graph
from .graph import Graph, Op
from .rope import rope_cos_sin, rope_inv_freq_from


def _to_f32(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch itself is not imported here
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class ReferenceExecutor:
    def __init__(self, graph_or_model: Graph | ModelConfig, weights: Mapping[str, Any],
                 batch: int, max_context: int) -> None:
        if isinstance(graph_or_model, ModelConfig):
            graph_or_model = build_decode_graph(graph_or_model, None, context=max_context,
                                                batch=batch, max_context=max_context)
        self.graph = graph = graph_or_model
        missing = [t.name for t in graph.weights() if t.name not in weights]
        if missing:
            raise KeyError(f"weights missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        # Only the tensors the graph uses; extras (e.g. a tied lm_head.weight) are ignored.
        self.w = {t.name: _to_f32(weights[t.name]) for t in graph.weights()}
        for t in graph.weights():
            assert self.w[t.name].shape == t.shape, (t.name, self.w[t.name].shape, t.shape)
        self.batch, self.max_context = batch, max_context

        attn = [op for op in graph.ops if op.kind == "DecodeAttention"]
        n_layers = len(attn)
        kv, d = (attn[0].num_kv_heads, attn[0].head_dim) if attn else (1, 1)
        # KV cache [layer][b][kv_head][position][head_dim], float32.
        self.k_cache = np.zeros((n_layers, batch, kv, max_context, d), np.float32)
        self.v_cache = np.zeros_like(self.k_cache)
        self.lengths = np.zeros(batch, np.int64)  # positions filled so far, per sequence
        self._inv_freq: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------------------ driving
    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One decode step: token b sits at position positions[b]. Returns logits (B, V) f32."""
        tokens = np.asarray(tokens, np.int64).reshape(self.batch)
        positions = np.asarray(positions, np.int64).reshape(self.batch)
        return self.run_rows(tokens, positions, np.arange(self.batch))

    def run_rows(self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The graph over rows: row r is token tokens[r] at position positions[r] of the sequence
        in cache slot slots[r]. A step is rows = slots 0..B-1; a prompt of T tokens prefilled into
        one slot is T rows of that slot at positions 0..T-1 (every row's K and V are appended
        before any row attends, so row t sees positions 0..t). Returns logits (rows, V) f32."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        positions = np.asarray(positions, np.int64).reshape(-1)
        slots = np.asarray(slots, np.int64).reshape(-1)
        if not tokens.shape == positions.shape == slots.shape:
            raise ValueError(f"tokens, positions and slots differ in length: {len(tokens)}, {len(positions)}, {len(slots)}")
        if positions.min() < 0 or positions.max() >= self.max_context:
            raise ValueError(f"positions {positions} outside [0, {self.max_context})")
        if slots.min() < 0 or slots.max() >= self.batch:
            raise ValueError(f"slots {slots} outside [0, {self.batch})")
        self._slots = slots
        env: dict[str, np.ndarray] = {**self.w, "tokens": tokens, "positions": positions}
        for op in self.graph.ops:
            outs = getattr(self, f"_{op.kind}")(op, *[env[n] for n in op.inputs])
            env.update(zip(op.outputs, outs))
        np.maximum.at(self.lengths, slots, positions + 1)
        self.last_env = env  # intermediate activations, handy when diffing a kernel
        return env["logits"]

    def reset(self) -> None:
        self.k_cache[:] = 0
        self.v_cache[:] = 0
        self.lengths[:] = 0

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        """Run prompts (B, T) from position 0, token by token; returns the last logits (B, V)."""
        tokens = np.asarray(tokens).reshape(self.batch, -1)
        self.reset()
        logits = None
        for t in range(tokens.shape[1]):
            logits = self.step(tokens[:, t], np.full(self.batch, t))
        return logits

    def generate(self, prompt: np.ndarray, n: int) -> np.ndarray:
        """Greedy decoding: n new tokens per sequence after prompt (B, T) (or (T,) when B = 1)."""
        logits = self.prefill(prompt)
        out = []
        for i in range(n):
            tok = np.argmax(logits, axis=-1)
            out.append(tok)
            if i + 1 < n:
                logits = self.step(tok, self.lengths.copy())
        return np.stack(out, axis=1) if out else np.zeros((self.batch, 0), np.int64)

    # ------------------------------------------------------------------------ op semantics
    def _Embedding(self, op: Op, tokens, table):
        h = table[tokens]
        return (h if op.scale is None else h * np.float32(op.scale),)

    def _RMSNorm(self, op: Op, x, w):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return (x / np.sqrt(var + np.float32(op.eps)) * (np.float32(op.offset) + w),)

    def _HeadRMSNorm(self, op: Op, q, k, wq, wk):
        d = op.head_dim

        def norm(x, w):
            xh = x.reshape(x.shape[0], -1, d)
            var = np.mean(xh * xh, axis=-1, keepdims=True)
            return (xh / np.sqrt(var + np.float32(op.eps)) * (np.float32(op.offset) + w)).reshape(x.shape)

        return norm(q, wq), norm(k, wk)

    def _Linear(self, op: Op, x, w, bias=None):
        y = x @ w.T  # HF layout: w is (out, in)
        if bias is not None:
            y = y + bias
        return (y.astype(np.float32),)

    def _Rope(self, op: Op, q, k, positions):
        d = op.head_dim
        key = (d, op.theta, op.scaling)  # one table per RoPE base and scaling: computed once
        if key not in self._inv_freq:
            self._inv_freq[key] = rope_inv_freq_from(d, op.theta, op.scaling)
        inv = self._inv_freq[key]
        cos, sin = rope_cos_sin(inv, positions)  # (B, d)
        cos, sin = cos[:, None, :], sin[:, None, :]

        def rot(x):
            xh = x.reshape(x.shape[0], -1, d)
            return (xh * cos + _rotate_half(xh) * sin).reshape(x.shape)

        return rot(q), rot(k)

    def _KVAppend(self, op: Op, k, v, positions):
        d = self.k_cache.shape[-1]
        for r, b in enumerate(self._slots):
            self.k_cache[op.layer, b, :, positions[r]] = k[r].reshape(-1, d)
            self.v_cache[op.layer, b, :, positions[r]] = v[r].reshape(-1, d)
        return self.k_cache[op.layer], self.v_cache[op.layer]

    def _DecodeAttention(self, op: Op, q, k_cache, v_cache, positions):
        nkv, d = op.num_kv_heads, op.head_dim
        group = op.num_heads // nkv
        out = np.empty_like(q)
        for r, b in enumerate(self._slots):
            n = positions[r] + 1  # causal: attend over positions 0..pos
            n0 = 0 if op.window is None else max(0, n - op.window)  # a sliding window: the last `window`
            K, V = k_cache[b, :, n0:n], v_cache[b, :, n0:n]  # (nkv, n - n0, d)
            qb = q[r].reshape(nkv, group, d)  # query head h uses kv head h // group
            s = np.einsum("kgd,knd->kgn", qb, K) * np.float32(op.attrs()["scale"])
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[r] = np.einsum("kgn,knd->kgd", p, V).reshape(-1)
        return (out,)

    def _ResidualAdd(self, op: Op, a, b):
        return (a + b,)

    def _SiluMul(self, op: Op, gate, up):
        return (gate / (np.float32(1) + np.exp(-gate)) * up,)

    def _GeluTanhMul(self, op: Op, gate, up):
        c = np.float32(math.sqrt(2.0 / math.pi))
        gelu = np.float32(0.5) * gate * (np.float32(1) + np.tanh(c * (gate + np.float32(0.044715) * gate ** 3)))
        return (gelu * up,)

    def _Softcap(self, op: Op, x):
        return (np.float32(op.cap) * np.tanh(x / np.float32(op.cap)),)

    def _Argmax(self, op: Op, logits):
        return (np.argmax(logits, axis=-1),)  # first max wins, as torch.argmax on CPU
