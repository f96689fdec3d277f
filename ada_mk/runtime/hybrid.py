"""Hybrid engine: prefill the prompt with batched PyTorch on the GPU (matrix-matrix products,
SDPA with a causal mask), write its K and V straight into the MegaKernel's cache, then decode in
the MegaKernel from position T on. This is the paper's split: high-throughput prefill elsewhere,
low-latency decode in the MegaKernel.

    engine = MegaKernelEngine(plan, fatbin); engine.load_weights(weights)
    hybrid = HybridPrefill(engine)
    next_tokens, logits = hybrid.prefill(prompt_ids)          # [B, T] -> [B], [B, V]
    engine.step(next_tokens, [T] * B)                           # decode goes on in the kernel
    hybrid.prefill(chunk, slot=s, start=p)                      # one slot's positions p..p+n-1

A prefill from `start` > 0 continues a prompt chunk by chunk: its queries attend over the slot's
positions 0..start-1 as the cache holds them (bf16, as the kernel's decode reads them) and over
the chunk's own keys causally; the chunk's K and V go to positions start..start+n-1.

The prefill reads the very bf16 weights the kernel reads (the packed device buffer, viewed as torch
tensors: no second copy; with keep_weights, a server's, the matrices as it multiplies them are kept
after the first prefill), computes in float32 by default (as the kernel accumulates), rounds K and V
to bf16 and stores them at [layer][b][kv_head][position][head_dim]. Torch is imported here only.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..config.model import ModelConfig
from ..ir.rope import rope_inv_freq
from .engine import KernelError, MegaKernelEngine, _check, _driver
from .weights import untile_matrix
from .weights import dequantize_segment_torch


class _CudaArray:
    """A raw device pointer dressed as __cuda_array_interface__ (v3) so torch can view it."""

    def __init__(self, ptr: int, numel: int) -> None:
        self.__cuda_array_interface__ = {"shape": (numel,), "typestr": "<i2", "data": (int(ptr), False),
                                         "strides": None, "version": 3}


def device_bf16(ptr: int, numel: int, device: Any):
    """A 1-D torch.bfloat16 view (no copy) of `numel` elements at device pointer `ptr`."""
    import torch

    return torch.as_tensor(_CudaArray(ptr, numel), device=device).view(torch.bfloat16)


class HybridPrefill:
    def __init__(self, engine: MegaKernelEngine, *, compute_dtype: str = "float32", device: Any = None,
                 zero_copy: bool = True, tensors: tuple[Any, Any, Any] | None = None,
                 keep_weights: bool | str = False) -> None:
        """`tensors`: flat bf16 torch tensors (packed weights, K cache, V cache) to read and
        write instead of the engine's device buffers, wherever they live (the CPU tests); the
        engine then only gives its plan and layout and synchronize(). `keep_weights`: keep the
        weight matrices as the prefill multiplies them (untiled or dequantized, in the compute
        dtype: `kept_bytes()` of memory) from the first prefill on, so that the next ones skip
        that work (a server's chunks); "auto": where that takes at most a quarter of the GPU's
        free memory."""
        import torch

        self.torch = torch
        self.engine, self.plan, self.model = engine, engine.plan, engine.plan.model
        if tensors is not None:
            device = tensors[0].device
        self.device = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[compute_dtype]
        m, L = self.model, engine.layout
        self.max_context = self.plan.deploy.max_context
        n_w = L.weights.total
        kv_elems = L.kv_elems_per_layer * m.num_hidden_layers
        self.zero_copy = zero_copy or tensors is not None
        if tensors is not None:
            self.wbuf, self.k_cache, self.v_cache = tensors
        elif zero_copy:
            self.wbuf = device_bf16(engine.buffers["weights"], n_w, self.device)
            self.k_cache = device_bf16(engine.buffers["k_cache"], kv_elems, self.device)
            self.v_cache = device_bf16(engine.buffers["v_cache"], kv_elems, self.device)
        else:  # a private copy of the packed weights; K/V go back with cuMemcpyDtoD
            self.wbuf = torch.empty(n_w, dtype=torch.bfloat16, device=self.device)
            torch.cuda.synchronize(self.device)
            _check(_driver().cuMemcpyDtoD(self.wbuf.data_ptr(), engine.buffers["weights"], n_w * 2))
            self.k_cache = self.v_cache = None
        B, kv, d = self.plan.batch, m.num_key_value_heads, m.head_dim
        self.cache_shape = (m.num_hidden_layers, B, kv, self.max_context, d)
        self._first_slot = 0  # the cache slot of the first prompt row (prefill's `slot`)
        self._start = 0  # the cache position of the first prompt column (prefill's `start`)
        self._rows = B  # prompt rows of the current prefill (1 with a `slot`)
        if keep_weights == "auto":
            keep_weights = self.device.type == "cuda" and self.kept_bytes() <= torch.cuda.mem_get_info(self.device)[0] // 4
        self.kept: dict | None = {} if keep_weights else None

    def kept_bytes(self) -> int:
        """Memory the kept weight matrices take (keep_weights): every weight segment but the
        embedding table's, in the compute dtype."""
        w, n_layers = self.engine.layout.weights, self.model.num_hidden_layers
        per_layer = sum(int(np.prod(sg.shape)) for sg in w.per_layer.values() if sg.shape)
        glob = sum(int(np.prod(sg.shape)) for name, sg in w.globals_.items() if sg.shape and name != "embed")
        return (per_layer * n_layers + glob) * self.torch.tensor([], dtype=self.dtype).element_size()

    def prefill(self, tokens, slot: int | None = None, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Prompts [B, T] (or [T] at batch 1) at positions start..start+T-1: fills the kernel's
        K/V cache there and returns the greedy next tokens [B] (int32) and logits [B, V] (f32)
        of the last position. With `slot`, one prompt [T] fills that slot's cache alone (the
        other slots' caches are not touched) and the returns are [1] and [1, V]: what a server
        admitting one request between decode steps needs. With `start` > 0 the tokens continue
        a sequence whose positions 0..start-1 are already in the cache (an earlier chunk)."""
        torch, m = self.torch, self.model
        B = self.plan.batch
        if slot is not None and not 0 <= slot < B:
            raise KernelError(f"slot {slot}: expected 0..{B - 1} (the plan's batch)")
        rows = B if slot is None else 1
        ids = torch.as_tensor(np.asarray(tokens, np.int64).reshape(rows, -1), device=self.device)
        T = ids.shape[1]
        if start < 0 or T < 1 or start + T > self.max_context:
            raise KernelError(f"prompt positions {start}..{start + T - 1}: expected within 0..{self.max_context - 1} "
                              "(the KV cache's size)")
        if int(ids.min()) < 0 or int(ids.max()) >= m.vocab_size:
            raise KernelError(f"token ids must be in [0, {m.vocab_size})")
        self._first_slot, self._start, self._rows = (0 if slot is None else slot), start, rows
        self.engine.synchronize()  # the kernel's stream must not be writing the cache
        logits = torch_prefill(m, self.engine.layout.weights, self.wbuf, ids, dtype=self.dtype, store=self._store,
                               start=start, past=self._past if start else None, kept=self.kept)
        nxt = logits.argmax(-1).to(torch.int32)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return nxt.cpu().numpy(), logits.cpu().numpy()

    def _store(self, layer: int, k, v) -> None:
        """K (roped) and V [rows, kv, T, d] -> the kernel's cache of slots first..first+rows-1 at
        positions start..start+T-1, as bf16."""
        torch = self.torch
        B, nkv, T, d = k.shape
        s0, p0 = self._first_slot, self._start
        kb, vb = k.to(torch.bfloat16), v.to(torch.bfloat16)
        if self.zero_copy:
            self.k_cache.view(self.cache_shape)[layer, s0:s0 + B, :, p0:p0 + T] = kb
            self.v_cache.view(self.cache_shape)[layer, s0:s0 + B, :, p0:p0 + T] = vb
            return
        drv = _driver()
        kb, vb = kb.contiguous(), vb.contiguous()
        torch.cuda.synchronize(self.device)
        row = self.max_context * d * 2  # bytes per (layer, b, kv_head) block of the cache
        for name, src in (("k_cache", kb), ("v_cache", vb)):
            base = self.engine.buffers[name] + ((layer * self.plan.batch + s0) * nkv) * row + p0 * d * 2
            for i in range(B * nkv):  # positions are consecutive: one contiguous block each
                _check(drv.cuMemcpyDtoD(base + i * row, src.data_ptr() + i * T * d * 2, T * d * 2))

    def _past(self, layer: int):
        """The cached K and V [rows, kv, start, d] (bf16) of slots first..first+rows-1 at
        positions 0..start-1: the prefix a chunk from `start` attends over."""
        torch = self.torch
        nkv, d = self.cache_shape[2], self.cache_shape[4]
        s0, p0 = self._first_slot, self._start
        rows = self._rows
        if self.zero_copy:
            return (self.k_cache.view(self.cache_shape)[layer, s0:s0 + rows, :, :p0],
                    self.v_cache.view(self.cache_shape)[layer, s0:s0 + rows, :, :p0])
        drv = _driver()
        row = self.max_context * d * 2
        out = []
        torch.cuda.synchronize(self.device)  # torch's pending work done before the driver copies
        for name in ("k_cache", "v_cache"):
            dst = torch.empty((rows, nkv, p0, d), dtype=torch.bfloat16, device=self.device)
            base = self.engine.buffers[name] + ((layer * self.plan.batch + s0) * nkv) * row
            for i in range(rows * nkv):
                _check(drv.cuMemcpyDtoD(dst.data_ptr() + i * p0 * d * 2, base + i * row, p0 * d * 2))
            out.append(dst)
        torch.cuda.synchronize(self.device)
        return tuple(out)


def torch_prefill(model: ModelConfig, region: Any, wbuf: Any, ids: Any, *, dtype: Any = None,
                  store: Callable[[int, Any, Any], None] | None = None, start: int = 0,
                  past: Callable[[int], tuple[Any, Any]] | None = None, kept: dict | None = None):
    """The batched forward pass over prompts `ids` [B, T] at positions start..start+T-1, reading
    the weights from `wbuf`, a 1-D bf16 torch tensor in the packed layout `region`
    (layout.weights). Calls store(layer, k, v) with the roped K and V [B, kv_heads, T, head_dim]
    of each layer and returns the last position's logits [B, V] in float32. With `start` > 0,
    past(layer) gives the roped K and V [B, kv_heads, start, head_dim] of the positions before,
    which the queries attend over too. `kept`: a dict that keeps each weight matrix as computed
    (untiled or dequantized, in `dtype`) for the next call, which then skips that work (the
    embedding table excepted: only the prompt's rows of it are converted). Runs wherever `wbuf`
    lives (CPU in the tests)."""
    import torch
    import torch.nn.functional as F

    m = model
    dtype = dtype or torch.float32
    dev = wbuf.device

    def seg(name: str, layer: int | None = None):
        if kept is not None and (name, layer) in kept:
            return kept[name, layer]
        if layer is None:
            sg, base = region.globals_[name], 0
        else:
            sg, base = region.per_layer[name], region.layer_base + layer * region.layer_stride
        if sg.linear is not None:  # quantized chunks: the values the kernel multiplies
            mat = dequantize_segment_torch(wbuf, sg, base).to(dtype)
        else:
            flat = wbuf[base + sg.offset: base + sg.offset + sg.size]
            mat = (untile_matrix(flat, sg.shape, sg.tiling) if sg.tiling else flat.view(*sg.shape)).to(dtype)
        if kept is not None:
            kept[name, layer] = mat
        return mat

    def embed(ids):
        sg = region.globals_["embed"]
        if sg.linear is not None or sg.tiling:
            return seg("embed")[ids]
        return wbuf[sg.offset: sg.offset + sg.size].view(*sg.shape)[ids].to(dtype)  # the prompt's rows alone

    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + m.rms_norm_eps)).to(dtype) * w

    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    B, T = ids.shape
    nh, nkv, d = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    if start and past is None:
        raise ValueError(f"a prefill from position {start} needs `past`, the cached K and V before it")
    with torch.no_grad():
        inv_freq = torch.from_numpy(rope_inv_freq(m)).to(dev)
        freqs = torch.arange(start, start + T, device=dev, dtype=torch.float32)[:, None] * inv_freq[None, :]
        # Query i (position start+i) sees keys 0..start+i: causal over the chunk, all of the past.
        mask = None if not start else (torch.arange(start + T, device=dev)[None, :]
                                        <= torch.arange(start, start + T, device=dev)[:, None])
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)  # [T, d], HF's layout
        x = embed(ids)  # [B, T, H]
        for layer in range(m.num_hidden_layers):
            h = rms(x, seg("input_norm", layer))
            qkv = h @ seg("wqkv", layer).T
            if m.attention_bias:
                qkv = qkv + seg("bqkv", layer)
            q, k, v = qkv.split([nh * d, nkv * d, nkv * d], dim=-1)
            q = q.view(B, T, nh, d).transpose(1, 2)  # [B, heads, T, d]
            k = k.view(B, T, nkv, d).transpose(1, 2)
            v = v.view(B, T, nkv, d).transpose(1, 2)
            if m.qk_norm:  # Qwen3: every head RMS-normed before RoPE (segment qk_norm: q's weight, then k's)
                wq, wk = seg("qk_norm", layer).split([d, d])
                q, k = rms(q, wq), rms(k, wk)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if store is not None:
                store(layer, k, v)
            if start:
                pk, pv = past(layer)
                k, v = torch.cat([pk.to(dtype), k], dim=2), torch.cat([pv.to(dtype), v], dim=2)
            rep = nh // nkv
            a = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1),
                                               attn_mask=mask, is_causal=mask is None)
            x = x + a.transpose(1, 2).reshape(B, T, nh * d) @ seg("wo", layer).T
            h = rms(x, seg("post_norm", layer))
            gu = h @ seg("wgate_up", layer).T
            g, u = gu[..., 0::2], gu[..., 1::2]  # rows interleaved (ada_mk/search/layout.py)
            x = x + (F.silu(g) * u) @ seg("wdown", layer).T
        return (rms(x[:, -1], seg("final_norm")) @ seg("lm_head").T).float()


def prefill_through_kernel(engine: MegaKernelEngine, tokens) -> tuple[np.ndarray, np.ndarray]:
    """The other way: the prompt token by token through the MegaKernel. Same return values."""
    prompt = np.asarray(tokens, np.int32).reshape(engine.batch, -1)
    T = prompt.shape[1]
    for t in range(T - 1):
        engine.step(prompt[:, t], np.full(engine.batch, t, np.int32))
    return engine.step(prompt[:, T - 1], np.full(engine.batch, T - 1, np.int32), want_logits=True)


__all__ = ["HybridPrefill", "device_bf16", "prefill_through_kernel"]
