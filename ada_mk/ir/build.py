"""Build the IR graph of one decode step from a ModelConfig (+ DeployConfig)."""
from __future__ import annotations

import math

import numpy as np

from ..config.deploy import DEFAULT_GROUPS, DeployConfig, stage_format
from ..config.model import ModelConfig
from .graph import (Argmax, DecodeAttention, Embedding, GeluTanhMul, Graph, HeadRMSNorm, KVAppend, Linear,
                    ResidualAdd, RMSNorm, Rope, SiluMul, Softcap)


def embed_scale(model: ModelConfig) -> float | None:
    """The factor on the embeddings: sqrt(hidden_size) rounded to bf16 (as HF Gemma 3 multiplies
    it in the weights' dtype), or None."""
    if not model.embed_scale:
        return None
    x = np.array([math.sqrt(model.hidden_size)], np.float32).view(np.uint32)
    bits = (x + 0x7FFF + ((x >> 16) & 1)) >> 16  # round to nearest even
    return float((bits << 16).astype(np.uint32).view(np.float32)[0])


def build_decode_graph(model: ModelConfig, deploy: DeployConfig | None = None, context: int = 512,
                       *, batch: int | None = None, max_context: int | None = None,
                       weights: str | None = None, weights_group: int | None = None) -> Graph:
    """One decode step for `deploy.batch` sequences, each attending over `context` positions.

    `batch` / `max_context` override the deploy values (or stand in for a missing deploy, as the
    reference executor does). `max_context` only sizes the KV-cache tensors; costs use `context`.
    The weight matrices of the linear ops (q, k, v, o, gate, up, down, the LM head) take the
    format `weights` / `weights_group`, else deploy.weights / weights_group, else bf16: 8-bit
    codes count a byte each plus their float32 scales. The embedding, the norms and the biases stay
    bf16. A tied LM head shares the embedding's tensor in bf16; with 8-bit weights it streams its
    own 8-bit copy of that matrix (docs/quantized-weights.md), the tensor `lm_head.weight`.
    """
    B = batch if batch is not None else (deploy.batch if deploy is not None else 1)
    T = max_context or (deploy.max_context if deploy is not None else max(context, 1))
    dt = deploy.dtype if deploy is not None else "bf16"
    wfmt = weights if weights is not None else (deploy.weights if deploy is not None else "bf16")
    if weights_group is not None:
        wgrp = weights_group
    elif weights is None and deploy is not None:
        wgrp = deploy.weights_group
    else:
        wgrp = DEFAULT_GROUPS.get(wfmt, 0)
    wdt = dt if wfmt == "bf16" else wfmt
    m = model
    H, I, V, d = m.hidden_size, m.intermediate_size, m.vocab_size, m.head_dim
    nh, nkv = m.num_attention_heads, m.num_key_value_heads
    assert nh % nkv == 0, "GQA needs num_attention_heads to be a multiple of num_key_value_heads"

    g = Graph(model_name=m.name, batch=B, context=context, dtype=dt, weights_format=wfmt,
              weights_group=wgrp if wfmt != "bf16" else 0)
    W = lambda name, *shape: g.tensor(name, shape, dt, "weight")  # noqa: E731
    WL = lambda name, *shape: g.tensor(name, shape, wdt, "weight", g.weights_group)  # noqa: E731  (a linear's matrix)
    A = lambda name, *shape: g.tensor(name, shape, dt, "activation")  # noqa: E731

    tokens = g.tensor("tokens", (B,), "i32", "input")
    pos = g.tensor("positions", (B,), "i32", "input")
    emb = W("model.embed_tokens.weight", V, H)
    h = A("h0", B, H)
    g.add(Embedding("embed", None, (tokens, emb), (h,), scale=embed_scale(m)))
    eps, off = m.rms_norm_eps, m.norm_offset

    def norm(name: str, layer: int | None, x: str, weight: str, out: str) -> str:
        y = A(out, B, H)  # declared before its weight: the tensors' order is ir.json's
        g.add(RMSNorm(name, layer, (x, W(weight, H)), (y,), eps=eps, offset=off))
        return y

    for i in range(m.num_hidden_layers):
        p, L = f"model.layers.{i}", f"L{i}"

        def linear(proj: str, x: str, n_out: int, n_in: int, bias: bool, out: str,
                   module: str) -> str:
            ins = [x, WL(f"{p}.{module}.{proj}.weight", n_out, n_in)]
            if bias:
                ins.append(W(f"{p}.{module}.{proj}.bias", n_out))
            g.add(Linear(f"{L}.{proj}", i, tuple(ins), (A(out, B, n_out),)))
            return out

        # Attention block.
        xn = norm(f"{L}.attn_norm", i, h, f"{p}.input_layernorm.weight", f"{L}.x_norm")
        bias = m.attention_bias
        q = linear("q_proj", xn, nh * d, H, bias, f"{L}.q", "self_attn")
        k = linear("k_proj", xn, nkv * d, H, bias, f"{L}.k", "self_attn")
        v = linear("v_proj", xn, nkv * d, H, bias, f"{L}.v", "self_attn")
        if m.qk_norm:
            qn, kn = A(f"{L}.q_norm", B, nh * d), A(f"{L}.k_norm", B, nkv * d)
            g.add(HeadRMSNorm(f"{L}.qk_norm", i, (q, k, W(f"{p}.self_attn.q_norm.weight", d),
                                                  W(f"{p}.self_attn.k_norm.weight", d)), (qn, kn),
                              head_dim=d, eps=eps, offset=off))
            q, k = qn, kn
        qr, kr = A(f"{L}.q_rot", B, nh * d), A(f"{L}.k_rot", B, nkv * d)
        sliding = m.is_sliding(i)
        theta, scaling = (m.rope_local_theta or m.rope_theta, None) if sliding else (m.rope_theta, m.rope_scaling)
        g.add(Rope(f"{L}.rope", i, (q, k, pos), (qr, kr), head_dim=d, theta=theta, scaling=scaling))
        kc = g.tensor(f"{L}.k_cache", (B, nkv, T, d), dt, "kv_cache")
        vc = g.tensor(f"{L}.v_cache", (B, nkv, T, d), dt, "kv_cache")
        g.add(KVAppend(f"{L}.kv_append", i, (kr, v, pos), (kc, vc)))
        ao = A(f"{L}.attn_out", B, nh * d)
        g.add(DecodeAttention(f"{L}.attn", i, (qr, kc, vc, pos), (ao,), num_heads=nh,
                              num_kv_heads=nkv, head_dim=d, context=context,
                              scale=m.attn_scale if m.query_pre_attn_scalar else None,
                              window=m.sliding_window if sliding else None))
        o = linear("o_proj", ao, H, nh * d, False, f"{L}.o", "self_attn")
        if m.sandwich_norm:  # Gemma 3: the attention output is normed before the residual
            o = norm(f"{L}.post_attn_norm", i, o, f"{p}.post_attention_layernorm.weight", f"{L}.o_norm")
        hm = A(f"{L}.h_mid", B, H)
        g.add(ResidualAdd(f"{L}.attn_residual", i, (h, o), (hm,)))

        # MLP block.
        mlp_norm = "pre_feedforward_layernorm" if m.sandwich_norm else "post_attention_layernorm"
        mn = norm(f"{L}.mlp_norm", i, hm, f"{p}.{mlp_norm}.weight", f"{L}.m_norm")
        gate = linear("gate_proj", mn, I, H, False, f"{L}.gate", "mlp")
        up = linear("up_proj", mn, I, H, False, f"{L}.up", "mlp")
        act = A(f"{L}.act", B, I)
        if m.hidden_act == "gelu_tanh":
            g.add(GeluTanhMul(f"{L}.gelu_mul", i, (gate, up), (act,)))
        else:
            g.add(SiluMul(f"{L}.silu_mul", i, (gate, up), (act,)))
        down = linear("down_proj", act, H, I, False, f"{L}.down", "mlp")
        if m.sandwich_norm:
            down = norm(f"{L}.post_mlp_norm", i, down, f"{p}.post_feedforward_layernorm.weight", f"{L}.down_norm")
        h_next = A(f"h{i + 1}", B, H)
        g.add(ResidualAdd(f"{L}.mlp_residual", i, (hm, down), (h_next,)))
        h = h_next

    hf = norm("final_norm", None, h, "model.norm.weight", "h_final")
    # Tied: the LM head's weight tensor IS the embedding tensor (bf16); quantized weights stream a
    # quantized copy of it. An int4 plan's head streams int8 (config.deploy.stage_format).
    if m.tie_word_embeddings and wfmt == "bf16":
        head = emb
    else:
        hfmt, hgrp = stage_format("lm_head", wfmt, g.weights_group)
        head = g.tensor("lm_head.weight", (V, H), dt if hfmt == "bf16" else hfmt, "weight", hgrp)
    logits = g.tensor("logits", (B, V), "f32", "output")
    if m.final_logit_softcapping is None:
        g.add(Linear("lm_head", None, (hf, head), (logits,)))
    else:
        raw = g.tensor("logits_raw", (B, V), "f32", "activation")
        g.add(Linear("lm_head", None, (hf, head), (raw,)))
        g.add(Softcap("logit_softcap", None, (raw,), (logits,), cap=m.final_logit_softcapping))
    nxt = g.tensor("next_token", (B,), "i32", "output")
    g.add(Argmax("argmax", None, (logits,), (nxt,)))
    return g
