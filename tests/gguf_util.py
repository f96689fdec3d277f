"""Write small GGUF files the way llama.cpp's convert_hf_to_gguf.py does (names, metadata, Q/K row
permutation, quantized blocks), for the loader's tests."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ada_mk.checkpoints.gguf_file import _GLOBAL_NAMES, _LAYER_NAMES, permute_qk
from ada_mk.checkpoints.tokenizer import bytes_to_unicode
from ada_mk.config import ModelConfig

CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "i s", "Ġ is"]


def tiny_vocab(size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE vocabulary of exactly `size` entries."""
    tokens = list(SPECIALS) + list(bytes_to_unicode().values())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    while len(tokens) < size:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(1)
    assert len(tokens) == size
    return tokens, types, list(MERGES)


def hf_to_gguf_name(hf: str) -> str:
    inv_g = {v: k for k, v in _GLOBAL_NAMES.items()}
    if hf in inv_g:
        return inv_g[hf]
    inv_l = {v: k for k, v in _LAYER_NAMES.items()}
    parts = hf.split(".")  # model.layers.N.rest
    return f"blk.{parts[2]}.{inv_l['.'.join(parts[3:])]}"


def write_gguf(path: Path, model: ModelConfig, weights: Mapping[str, np.ndarray], qtypes: Mapping[str, str],
               *, arch: str | None = None, extra: Mapping[str, np.ndarray] | None = None,
               skip: tuple[str, ...] = (), tokenizer: bool = True) -> Path:
    """`qtypes`: HF-name suffix -> GGML type name ("Q4_0", "F16", ...); default F32."""
    import gguf

    arch = arch or model.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("Tiny Test")
    w.add_basename("tiny")
    w.add_size_label("1M")
    w.add_block_count(model.num_hidden_layers)
    w.add_context_length(model.max_position_embeddings)
    w.add_embedding_length(model.hidden_size)
    w.add_feed_forward_length(model.intermediate_size)
    w.add_head_count(model.num_attention_heads)
    w.add_head_count_kv(model.num_key_value_heads)
    w.add_rope_freq_base(model.rope_theta)
    w.add_layer_norm_rms_eps(model.rms_norm_eps)
    w.add_rope_dimension_count(model.head_dim)
    w.add_vocab_size(model.vocab_size)
    if model.head_dim != model.hidden_size // model.num_attention_heads:
        w.add_key_length(model.head_dim)
        w.add_value_length(model.head_dim)
    if tokenizer:
        tokens, types, merges = tiny_vocab(model.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
    for hf, arr in weights.items():
        if hf in skip:
            continue
        a = np.asarray(arr, np.float32)
        if arch == "llama" and hf.endswith("q_proj.weight"):
            a = permute_qk(a, model.num_attention_heads)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            a = permute_qk(a, model.num_key_value_heads)
        q = next((t for suffix, t in qtypes.items() if hf.endswith(suffix)), "F32")
        name = hf_to_gguf_name(hf)
        if q == "F32":
            w.add_tensor(name, np.ascontiguousarray(a))
        elif q == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            qt = gguf.GGMLQuantizationType[q]
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def stored(arr: np.ndarray, q: str) -> np.ndarray:
    """What a tensor reads back as after quantization to `q` (no permutation)."""
    import gguf

    a = np.asarray(arr, np.float32)
    if q == "F32":
        return a
    if q == "F16":
        return a.astype(np.float16).astype(np.float32)
    qt = gguf.GGMLQuantizationType[q]
    return gguf.quants.dequantize(gguf.quants.quantize(a, qt), qt).reshape(a.shape)
