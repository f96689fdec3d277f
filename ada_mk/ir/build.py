"""Build the IR graph of one decode step from a ModelConfig (+ DeployConfig)."""
from __future__ import annotations

from ..config.deploy import DEFAULT_GROUPS, DeployConfig, stage_format
from ..config.model import ModelConfig
from .graph import (Argmax, DecodeAttention, Embedding, Graph, KVAppend, Linear, ResidualAdd,
                    RMSNorm, Rope, SiluMul)


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
    g.add(Embedding("embed", None, (tokens, emb), (h,)))

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
        xn = A(f"{L}.x_norm", B, H)
        g.add(RMSNorm(f"{L}.attn_norm", i, (h, W(f"{p}.input_layernorm.weight", H)), (xn,),
                      eps=m.rms_norm_eps))
        bias = m.attention_bias
        q = linear("q_proj", xn, nh * d, H, bias, f"{L}.q", "self_attn")
        k = linear("k_proj", xn, nkv * d, H, bias, f"{L}.k", "self_attn")
        v = linear("v_proj", xn, nkv * d, H, bias, f"{L}.v", "self_attn")
        qr, kr = A(f"{L}.q_rot", B, nh * d), A(f"{L}.k_rot", B, nkv * d)
        g.add(Rope(f"{L}.rope", i, (q, k, pos), (qr, kr), head_dim=d, theta=m.rope_theta,
                   scaling=m.rope_scaling))
        kc = g.tensor(f"{L}.k_cache", (B, nkv, T, d), dt, "kv_cache")
        vc = g.tensor(f"{L}.v_cache", (B, nkv, T, d), dt, "kv_cache")
        g.add(KVAppend(f"{L}.kv_append", i, (kr, v, pos), (kc, vc)))
        ao = A(f"{L}.attn_out", B, nh * d)
        g.add(DecodeAttention(f"{L}.attn", i, (qr, kc, vc, pos), (ao,), num_heads=nh,
                              num_kv_heads=nkv, head_dim=d, context=context))
        o = linear("o_proj", ao, H, nh * d, False, f"{L}.o", "self_attn")
        hm = A(f"{L}.h_mid", B, H)
        g.add(ResidualAdd(f"{L}.attn_residual", i, (h, o), (hm,)))

        # MLP block.
        mn = A(f"{L}.m_norm", B, H)
        g.add(RMSNorm(f"{L}.mlp_norm", i, (hm, W(f"{p}.post_attention_layernorm.weight", H)),
                      (mn,), eps=m.rms_norm_eps))
        gate = linear("gate_proj", mn, I, H, False, f"{L}.gate", "mlp")
        up = linear("up_proj", mn, I, H, False, f"{L}.up", "mlp")
        act = A(f"{L}.act", B, I)
        g.add(SiluMul(f"{L}.silu_mul", i, (gate, up), (act,)))
        down = linear("down_proj", act, H, I, False, f"{L}.down", "mlp")
        h_next = A(f"h{i + 1}", B, H)
        g.add(ResidualAdd(f"{L}.mlp_residual", i, (hm, down), (h_next,)))
        h = h_next

    hf = A("h_final", B, H)
    g.add(RMSNorm("final_norm", None, (h, W("model.norm.weight", H)), (hf,), eps=m.rms_norm_eps))
    # Tied: the LM head's weight tensor IS the embedding tensor (bf16); quantized weights stream a
    # quantized copy of it. An int4 plan's head streams int8 (config.deploy.stage_format).
    if m.tie_word_embeddings and wfmt == "bf16":
        head = emb
    else:
        hfmt, hgrp = stage_format("lm_head", wfmt, g.weights_group)
        head = g.tensor("lm_head.weight", (V, H), dt if hfmt == "bf16" else hfmt, "weight", hgrp)
    logits = g.tensor("logits", (B, V), "f32", "output")
    g.add(Linear("lm_head", None, (hf, head), (logits,)))
    nxt = g.tensor("next_token", (B,), "i32", "output")
    g.add(Argmax("argmax", None, (logits,), (nxt,)))
    return g
