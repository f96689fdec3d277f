"""The PyTorch baselines: a gpt-fast-style decoder written from the same ModelConfig, and helpers
for HF transformers' own model (random weights, a static KV cache we can fill and position).

This module imports torch at the top: the harness imports it lazily (torch is not a dependency of
ada-mk). The decoder shares the HF model's weight tensors (q|k|v and gate|up are concatenated
once, as gpt-fast does), so it computes the same function; tests/test_bench.py checks it against
HF transformers on the CPU in float32. With 8-bit weights (ada_mk/bench/quantized.py) it computes
the function of the dequantized weights; tests/test_bench_quantized.py checks that.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch._dynamo  # noqa: F401 - mark_static_address
import torch.nn as nn
import torch.nn.functional as F

from ..config.model import ModelConfig
from ..ir.rope import rope_inv_freq
from .int4_linear import Int4WeightOnlyLinear
from .quantized import WeightOnlyLinear, linear

FLEX_BLOCK = 128  # flex_attention's default sparse block; cache lengths are multiples of it

# ---------------------------------------------------------------------------------------------
# The gpt-fast-style model (one screenful): RMSNorm, RoPE (llama3 scaling included), Qwen3's q/k
# head norms, GQA attention
# over a static KV cache (flex_attention decoding or SDPA), SwiGLU MLP, tied or untied LM head.


def _p(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach(), requires_grad=False)


def _w(t: torch.Tensor, weights_format: str) -> nn.Parameter | WeightOnlyLinear | Int4WeightOnlyLinear:
    """A linear's weight: the float tensor itself ("bf16": the model's dtype), an 8-bit weight-only
    module ("int8", "fp8") quantized from it per output row, or an int4 one ("int4": tinygemm,
    group 128, ada_mk/bench/int4_linear.py)."""
    if weights_format == "bf16":
        return _p(t)
    if weights_format == "int4":
        return Int4WeightOnlyLinear.quantize(t)
    return WeightOnlyLinear.quantize(t, weights_format)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotate_half convention (the HF checkpoints' Q/K row order), in float32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, m: ModelConfig, w: Mapping[str, torch.Tensor], i: int, weights_format: str = "bf16"):
        super().__init__()
        p = f"model.layers.{i}."
        cat = lambda *names: torch.cat([w[p + n] for n in names])  # noqa: E731
        self.m = m
        self.attn_norm = _p(w[p + "input_layernorm.weight"])
        self.mlp_norm = _p(w[p + "post_attention_layernorm.weight"])
        self.wqkv = _w(cat(*(f"self_attn.{x}_proj.weight" for x in "qkv")), weights_format)
        self.bqkv = _p(cat(*(f"self_attn.{x}_proj.bias" for x in "qkv"))) if m.attention_bias else None
        self.q_norm = _p(w[p + "self_attn.q_norm.weight"]) if m.qk_norm else None
        self.k_norm = _p(w[p + "self_attn.k_norm.weight"]) if m.qk_norm else None
        self.wo = _w(w[p + "self_attn.o_proj.weight"], weights_format)
        self.w13 = _w(cat("mlp.gate_proj.weight", "mlp.up_proj.weight"), weights_format)
        self.w2 = _w(w[p + "mlp.down_proj.weight"], weights_format)
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x, cos, sin, input_pos, mask, attention: str):
        m, B = self.m, x.shape[0]
        nh, nkv, d = m.num_attention_heads, m.num_key_value_heads, m.head_dim
        q, k, v = linear(rms_norm(x, self.attn_norm, m.rms_norm_eps), self.wqkv, self.bqkv).split(
            [nh * d, nkv * d, nkv * d], dim=-1)
        q, k, v = (t.view(B, 1, -1, d).transpose(1, 2) for t in (q, k, v))  # [B, heads, 1, d]
        if self.q_norm is not None:
            q, k = rms_norm(q, self.q_norm, m.rms_norm_eps), rms_norm(k, self.k_norm, m.rms_norm_eps)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        if attention == "flex":  # decoding kernel; the block mask skips KV blocks past the position
            y = flex_attention(q, self.k_cache, self.v_cache, block_mask=mask, enable_gqa=nh != nkv)
        else:  # gpt-fast's SDPA path: expand K/V to every query head, mask the unused positions
            kk, vv = (c.repeat_interleave(nh // nkv, dim=1) for c in (self.k_cache, self.v_cache))
            y = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        h = x + linear(y.transpose(1, 2).reshape(B, 1, nh * d), self.wo)
        gate, up = linear(rms_norm(h, self.mlp_norm, m.rms_norm_eps), self.w13).chunk(2, dim=-1)
        return h + linear(F.silu(gate) * up, self.w2)


class GptFastDecoder(nn.Module):
    """Decode-only (one token per sequence per step) over a static cache of `max_seq` positions.
    weights_format "int8" or "fp8": every linear of the layers and the LM head is an 8-bit
    weight-only linear (quantized here from `weights`), as gpt-fast's int8 mode; "int4": an int4
    weight-only linear (tinygemm), as gpt-fast's int4 mode; the embedding, norms and biases keep the
    weights' dtype (a tied head gets its own quantized copy)."""

    def __init__(self, m: ModelConfig, weights: Mapping[str, torch.Tensor], batch: int, max_seq: int,
                 attention: str = "flex", weights_format: str = "bf16"):
        super().__init__()
        if weights_format not in ("bf16", "int8", "fp8", "int4"):
            raise ValueError(f"GptFastDecoder: weights_format {weights_format!r}; expected bf16, int8, fp8 or int4")
        self.m, self.batch, self.weights_format = m, batch, weights_format
        self.embed = _p(weights["model.embed_tokens.weight"])
        if weights_format != "bf16":
            self.head = _w(weights["lm_head.weight"], weights_format)  # hf_weights maps a tied head
        else:
            self.head = self.embed if m.tie_word_embeddings else _p(weights["lm_head.weight"])
        self.norm = _p(weights["model.norm.weight"])
        self.layers = nn.ModuleList(Block(m, weights, i, weights_format) for i in range(m.num_hidden_layers))
        for name in ("cos", "sin", "causal"):
            self.register_buffer(name, None, persistent=False)
        self.setup_cache(max_seq, attention)

    def setup_cache(self, max_seq: int, attention: str) -> None:
        """(Re)allocate the K/V caches [B, kv_heads, max_seq, d], the RoPE tables and the mask."""
        assert attention in ("flex", "sdpa") and max_seq % FLEX_BLOCK == 0, (attention, max_seq)
        m, dev, dt = self.m, self.embed.device, self.embed.dtype
        self.max_seq, self.attention = max_seq, attention
        for b in self.layers:
            b.k_cache = b.v_cache = None
            shape = (self.batch, m.num_key_value_heads, max_seq, m.head_dim)
            b.k_cache, b.v_cache = torch.zeros(shape, dtype=dt, device=dev), torch.zeros(shape, dtype=dt, device=dev)
        inv = torch.from_numpy(rope_inv_freq(m)).to(dev)
        ang = torch.outer(torch.arange(max_seq, device=dev, dtype=torch.float32), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.cos, self.sin = ang.cos(), ang.sin()
        self.block_mask = self.causal = None
        if attention == "flex":
            self.block_mask = create_block_mask(causal_mask, 1, 1, max_seq, max_seq, device=dev)
        else:
            self.causal = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool, device=dev))
        # Fixed addresses, so that CUDA graphs (mode="reduce-overhead") neither copy nor refuse them.
        static = [self.cos, self.sin, self.causal] + [c for b in self.layers for c in (b.k_cache, b.v_cache)]
        static += [t for t in (self.block_mask.as_tuple() if self.block_mask is not None else ())
                   if isinstance(t, torch.Tensor)]
        for t in static:
            if t is not None:
                torch._dynamo.mark_static_address(t)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, mask: Any) -> torch.Tensor:
        """tokens [B, 1], input_pos [1] (int64) -> logits [B, V]."""
        cos, sin = self.cos[input_pos].view(1, 1, 1, -1), self.sin[input_pos].view(1, 1, 1, -1)
        x = F.embedding(tokens, self.embed)
        for b in self.layers:
            x = b(x, cos, sin, input_pos, mask, self.attention)
        return linear(rms_norm(x, self.norm, self.m.rms_norm_eps), self.head)[:, -1]


def causal_mask(b, h, q, kv):
    return q >= kv


def decode_one_token(model: GptFastDecoder, tokens: torch.Tensor, input_pos: torch.Tensor):
    """One greedy decode step, as gpt-fast's decode_one_token: (next tokens [B], logits [B, V]).
    flex: the row of the causal block mask holding `input_pos` (so only KV blocks up to it are
    visited), its mask_mod shifted to that position. This is the function torch.compile compiles."""
    if model.attention == "flex":
        bm = model.block_mask
        mask = bm[:, :, input_pos // bm.BLOCK_SIZE[0]]
        mask.mask_mod = _shifted_causal(input_pos[0])
        mask.seq_lengths = (1, model.max_seq)
    else:
        mask = model.causal[None, None, input_pos]
    logits = model(tokens, input_pos, mask)
    return logits.argmax(dim=-1), logits


def _shifted_causal(offset):
    def mask_mod(b, h, q, kv):
        return q + offset >= kv

    return mask_mod


def flex_attention(*args, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention as fa

    return fa(*args, **kwargs)


def create_block_mask(*args, **kwargs):
    from torch.nn.attention.flex_attention import create_block_mask as cbm

    return cbm(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# HF transformers: config, random model, static cache


def hf_config(m: ModelConfig, attn_implementation: str = "sdpa"):
    """The HF config equivalent to `m` (transformers 5.x: rope_parameters; 4.x: rope_theta/rope_scaling)."""
    import transformers
    from transformers import AutoConfig

    if m.model_type not in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text") or (m.model_type == "qwen2") != m.attention_bias:
        raise ValueError(f"{m.name}: model_type {m.model_type!r} with attention_bias={m.attention_bias} "
                         "has no HF transformers equivalent")
    kw: dict[str, Any] = dict(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim, rms_norm_eps=m.rms_norm_eps,
        max_position_embeddings=m.max_position_embeddings, tie_word_embeddings=m.tie_word_embeddings,
        hidden_act="silu", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if m.model_type == "mistral":
        kw["sliding_window"] = None
    if m.model_type in ("qwen2", "qwen3"):
        kw["use_sliding_window"] = False
    scaling = None
    if m.rope_scaling is not None and m.rope_scaling.rope_type != "default":
        scaling = {k: v for k, v in m.rope_scaling.__dict__.items()
                   if m.rope_scaling.rope_type == "llama3" or k in ("rope_type", "factor")}
    v5 = int(transformers.__version__.split(".")[0]) >= 5
    if m.model_type == "gemma3_text":
        del kw["hidden_act"]
        scalar = m.query_pre_attn_scalar or m.head_dim
        kw.update(hidden_activation="gelu_pytorch_tanh",
                  query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,  # HF wants an int
                  sliding_window=m.sliding_window, layer_types=list(m.layer_types or ()),
                  final_logit_softcapping=m.final_logit_softcapping, attn_logit_softcapping=None)
        local = m.rope_local_theta or m.rope_theta
        if v5:
            kw["rope_parameters"] = {
                "full_attention": {"rope_type": "default", "rope_theta": m.rope_theta, **(scaling or {})},
                "sliding_attention": {"rope_type": "default", "rope_theta": local}}
        else:
            kw.update(rope_theta=m.rope_theta, rope_scaling=scaling, rope_local_base_freq=local)
    elif v5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": m.rope_theta, **(scaling or {})}
    else:
        kw["rope_theta"], kw["rope_scaling"] = m.rope_theta, scaling
    cfg = AutoConfig.for_model(m.model_type, **kw)
    cfg._attn_implementation = attn_implementation
    return cfg


def random_hf_model(m: ModelConfig, *, device: str = "cuda", dtype=torch.bfloat16, seed: int = 0,
                    attn_implementation: str = "sdpa", gain: float = 0.5):
    """An HF *ForCausalLM with random weights, eval mode. Variance-preserving init (std gain/sqrt(fan_in),
    output projections further / sqrt(2 layers)), as tests/gpu uses: HF's N(0, 0.02) makes bf16 noise
    dominate the logits. Norm weights 1 + N(0, 0.1^2) and biases N(0, 0.1^2) so neither is a no-op."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(m, attn_implementation)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn_implementation)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # a tied head appears once
            noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif "embed_tokens" in name or name.startswith("lm_head"):
                p.copy_(0.02 * noise)
            else:
                std = gain / p.shape[1] ** 0.5
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= (2 * m.num_hidden_layers) ** 0.5
                p.copy_(std * noise)
            del noise
    return hf.eval()


def hf_weights(hf) -> dict[str, torch.Tensor]:
    """HF-named weight tensors (shared storage; a tied lm_head maps to the embedding)."""
    w = {k: v for k, v in hf.state_dict().items()}
    if "lm_head.weight" not in w and getattr(hf.config, "tie_word_embeddings", False):
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    return w


def hf_static_cache(hf, batch: int, max_len: int):
    """A transformers StaticCache of `max_len` positions, allocated now (not on first use)."""
    from transformers import StaticCache

    c = hf.config
    cache = StaticCache(config=c, max_cache_len=max_len)
    dtype, device = next(hf.parameters()).dtype, next(hf.parameters()).device
    if hasattr(cache, "early_initialization"):
        cache.early_initialization(batch, c.num_key_value_heads, c.head_dim, dtype, device)
    else:  # an older transformers: one dummy step allocates the layers
        with torch.no_grad():
            hf(input_ids=torch.zeros(batch, 1, dtype=torch.long, device=device), past_key_values=cache, use_cache=True)
    return cache


def cache_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer of an HF static cache, [B, kv_heads, max_len, d]."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers 4.x


def set_cache_position(cache, pos: int) -> None:
    """Make the next HF step write (and attend up to) position `pos`: transformers 5.x static layers
    keep the position in a device tensor, `cumulative_length`, which every step advances."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(isinstance(getattr(l, "cumulative_length", None), torch.Tensor) for l in layers):
        raise RuntimeError("this transformers version's StaticCache has no cumulative_length tensors; "
                           "adamk-bench supports transformers 5.x")
    for layer in layers:
        layer.cumulative_length.fill_(pos)


def hf_step(hf, cache, tokens: torch.Tensor) -> torch.Tensor:
    """One HF decode step at the cache's position: logits [B, V]."""
    return hf(input_ids=tokens, past_key_values=cache, use_cache=True).logits[:, -1]


def fill_random_kv(caches: list[tuple[torch.Tensor, torch.Tensor]], n: int, seed: int) -> None:
    """Write the same N(0, 1) K/V (drawn from `seed`) into positions [0, n) of each layer's caches,
    whatever the cache length, so that HF's cache and ours hold identical contents."""
    dev = caches[0][0].device
    gen = torch.Generator(device=dev).manual_seed(seed)
    for k, v in caches:
        for c in (k, v):
            c[:, :, :n].copy_(torch.randn(c[:, :, :n].shape, generator=gen, device=dev, dtype=torch.float32))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
