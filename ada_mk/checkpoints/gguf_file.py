"""GGUF files (llama.cpp's format): model hyper-parameters from the metadata, tensors dequantized
to float32 on access, tensor names mapped to HF's, and llama.cpp's Q/K row permutation undone.

    model, weights, tok = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

Needs the `gguf` package (pip install 'ada-mk[gguf]'). Tested types: F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q4_K, Q5_0, Q6_K; anything else `gguf.quants.dequantize` knows is accepted as well. Architectures:
llama, qwen2, qwen3 and gemma3 (its norm weights stored as w + 1 are read back as HF's w). Matrices are also
handed out as stored, read from the raw blocks (`weights[name]` equals their dequantize()):
  - Q8_0: `weights.quantized[name]` (ada_mk.quant.QuantizedMatrix, int8, a scale per 32 columns);
  - Q4_0, Q4_1, Q4_K: `weights.int4[name]` (ada_mk.quant.Int4Matrix, group 32), a mapping of its
    own so that `quantized` keeps meaning the 8-bit matrices its consumers stream.
Other types (Q6_K of a Q4_K_M file, Q5_*, ...) have no stored form yet: they appear in `weights`
only, dequantized by gguf.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config.gemma3 import SLIDING_WINDOW_PATTERN
from ..config.model import ModelConfig, RopeScaling
from ..quant import (INT4_TYPES, Int4Matrix, QuantFormatError, QuantizedMatrix, QuantizedTensors, gguf_int4_matrix,
                     q8_0_matrix)
from .errors import CheckpointError
from .names import check_weights

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",  # Qwen3's per-head q/k RMSNorm
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": "rope_freqs.weight",  # llama3 RoPE factors: ignored (the config decides)
}
# Gemma 3's four norms per block: llama.cpp's ffn_norm is the norm before the MLP, as elsewhere,
# but HF names it pre_feedforward_layernorm there (post_attention_layernorm follows attention).
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
# Gemma's RMSNorm scales by (1 + w); llama.cpp's converter stores w + 1 for a plain RMSNorm.
GEMMA_NORM_SHIFT = 1.0


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLK.match(name)
    names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    if m and m[2] in names:
        return f"model.layers.{m[1]}.{names[m[2]]}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's `permute`, which reorders each head's rows from HF's rotate-half
    RoPE layout (first half, second half) to llama.cpp's interleaved pairs:
        gguf = hf.reshape(n_head, 2, d/2, ...).swapaxes(1, 2).reshape(shape)."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of unpermute_qk): for writing test files."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


@dataclass
class GGUFTokenizerInfo:
    """What a GGUF file says about its tokenizer (tokenizer.ggml.* and tokenizer.chat_template)."""

    model: str  # "gpt2" (byte-level BPE), "llama" (SentencePiece), ...
    pre: str | None
    tokens: list[str]
    token_type: list[int] | None
    merges: list[str] | None
    bos_token_id: int | None
    eos_token_id: int | None
    eot_token_id: int | None = None
    add_bos_token: bool = False
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    scores: list[float] | None = None  # SentencePiece: each token's score (its merge priority)
    unknown_token_id: int | None = None
    add_space_prefix: bool = True  # SentencePiece: a space before the text ("first" word gets "▁")
    architecture: str = ""  # general.architecture (Gemma files spell their vocabulary their own way)


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading GGUF files needs the gguf package: pip install 'ada-mk[gguf]' (or gguf)") from None
    return gguf


def _value(f: Any) -> Any:
    """A metadata field's value (scalar, string or list), for old and new gguf versions."""
    if hasattr(f, "contents"):
        return f.contents()
    import gguf  # pragma: no cover - gguf < 0.10

    types = f.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        vals = [f.parts[i] for i in f.data]
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(v).decode("utf-8", "replace") for v in vals]
        return [v.tolist()[0] for v in vals]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    return f.parts[f.data[0]].tolist()[0]


def _f32_round(x: float) -> float:
    """GGUF stores floats as float32 (1e-5 reads back as 9.999999747e-06): take the shortest
    decimal that rounds to the same float32, so configs match the published ones exactly."""
    return float(str(np.float32(x)))


class GGUFWeights(Mapping):
    """HF name -> float32 ndarray, dequantized (and un-permuted) from the memory-mapped file on
    access; `norm_shift` is taken off the norm weights (Gemma's, stored as w + 1)."""

    def __init__(self, path: Path, tensors: Mapping[str, Any], model: ModelConfig, permute: bool,
                 norm_shift: float = 0.0) -> None:
        self.path, self.tensors, self.model, self.permute = path, dict(tensors), model, permute
        self.norm_shift = norm_shift

    def __getitem__(self, name: str) -> np.ndarray:
        gguf = _import_gguf()
        t = self.tensors[name]
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0 and len(t.shape) == 2:
            return self.quantized_matrix(name).dequantize()
        if t.tensor_type.name in INT4_TYPES and len(t.shape) == 2:
            return self.int4_matrix(name).dequantize()  # bit for bit gguf's own dequantization
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{self.path}: tensor {t.name!r} is {t.tensor_type.name}, which this gguf "
                                  "version cannot dequantize") from None
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        if self.norm_shift and name.endswith("norm.weight"):
            w = w - np.float32(self.norm_shift)
        heads = self._permuted_heads(name)
        return w if heads is None else unpermute_qk(w, heads)

    def quantized_matrix(self, name: str) -> QuantizedMatrix:
        """A Q8_0 matrix as stored: its blocks' fp16 scales and int8 values, rows un-permuted."""
        return self._as_stored(name, lambda t, shape: q8_0_matrix(np.asarray(t.data), shape, t.name))

    def int4_matrix(self, name: str) -> Int4Matrix:
        """A Q4_0 / Q4_1 / Q4_K matrix as stored: its codes, scales and offsets, rows un-permuted."""
        return self._as_stored(
            name, lambda t, shape: gguf_int4_matrix(np.asarray(t.data), t.tensor_type.name, shape, t.name))

    def _as_stored(self, name: str, read: Any) -> Any:
        """read(tensor, [N, K] shape) of a quantized tensor, with llama.cpp's Q/K row order undone
        (the matrix's take_rows); format errors as CheckpointError naming the file."""
        t = self.tensors[name]
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        try:
            m = read(t, shape)
        except QuantFormatError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        heads = self._permuted_heads(name)
        if heads is not None:
            m = m.take_rows(unpermute_qk(np.arange(shape[0]), heads))
        return m

    def _permuted_heads(self, name: str) -> int | None:
        """The head count of a Q/K tensor whose rows llama.cpp permuted (None: not permuted)."""
        if self.permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            return self.model.num_attention_heads
        if self.permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            return self.model.num_key_value_heads
        return None

    @property
    def quantized(self) -> QuantizedTensors:
        """The Q8_0 matrices as stored: name -> QuantizedMatrix, read on access."""
        gguf = _import_gguf()
        names = [n for n, t in self.tensors.items()
                 if t.tensor_type == gguf.GGMLQuantizationType.Q8_0 and len(t.shape) == 2]
        return QuantizedTensors(names, self.quantized_matrix)

    @property
    def int4(self) -> QuantizedTensors:
        """The Q4_0 / Q4_1 / Q4_K matrices as stored: name -> Int4Matrix, read on access."""
        names = [n for n, t in self.tensors.items() if t.tensor_type.name in INT4_TYPES and len(t.shape) == 2]
        return QuantizedTensors(names, self.int4_matrix)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(int(s) for s in reversed(t.shape.tolist())) for k, t in self.tensors.items()}


def _model_name(meta: Mapping[str, Any], path: Path) -> str:
    base, size = meta.get("general.basename"), meta.get("general.size_label")
    name = f"{base}-{size}" if isinstance(base, str) and isinstance(size, str) else path.stem
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name.lower()).strip("-.") or "model"


def model_from_metadata(meta: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]],
                        path: Path) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"{path}: general.architecture = {arch!r}; expected one of {', '.join(SUPPORTED_ARCHS)}")

    def get(key: str, default: Any = None, required: bool = True) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None and required:
            raise CheckpointError(f"{path}: metadata {arch}.{key} is missing")
        return v

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv = int(get("attention.head_count_kv", heads))
    head_dim = int(get("attention.key_length", hidden // heads))
    if get("attention.value_length", head_dim) != head_dim:
        raise CheckpointError(f"{path}: {arch}.attention.value_length differs from key_length; unsupported")
    rope_dims = get("rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise CheckpointError(f"{path}: {arch}.rope.dimension_count = {rope_dims}: partial RoPE is unsupported "
                              f"(head_dim {head_dim})")
    scaling = get("rope.scaling.type", "none", required=False)
    rope_scaling = None
    if arch == "gemma3" and scaling == "linear":  # Gemma 3's global layers (4B and up)
        rope_scaling = RopeScaling("linear", float(get("rope.scaling.factor")))
    elif scaling not in ("none", None):
        raise CheckpointError(f"{path}: {arch}.rope.scaling.type = {scaling!r} is unsupported; pass a config "
                              "with the model's rope_scaling")
    if "rope_freqs.weight" in tensor_shapes:
        raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (llama3 RoPE scaling) cannot be turned into "
                              "a config; pass the model's config (with rope_scaling) explicitly")
    extra: dict[str, Any] = {}
    if arch == "gemma3":
        # What llama.cpp fixes for Gemma 3 rather than storing: every 6th layer global, local RoPE
        # base 10000; query_pre_attn_scalar as Gemma3TextConfig's default (256, the head size).
        layers = int(get("block_count"))
        extra = dict(qk_norm=True, norm_offset=1.0, sandwich_norm=True, embed_scale=True, hidden_act="gelu_tanh",
                     query_pre_attn_scalar=256.0, sliding_window=int(get("attention.sliding_window")),
                     layer_types=tuple("sliding_attention" if (i + 1) % SLIDING_WINDOW_PATTERN else "full_attention"
                                       for i in range(layers)),
                     rope_local_theta=10000.0)
    elif arch == "qwen3":
        extra = dict(qk_norm=True)
    vocab = get("vocab_size", None, required=False)
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else tensor_shapes.get("model.embed_tokens.weight", (0,))[0]
    return ModelConfig(
        name=_model_name(meta, path),
        model_type="gemma3_text" if arch == "gemma3" else arch,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        vocab_size=int(vocab),
        rms_norm_eps=_f32_round(get("attention.layer_norm_rms_epsilon")),
        rope_theta=_f32_round(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length")),
        tie_word_embeddings="lm_head.weight" not in tensor_shapes,
        attention_bias=arch == "qwen2",
        rope_scaling=rope_scaling,
        **extra,
    )


def _tokenizer_info(meta: Mapping[str, Any]) -> GGUFTokenizerInfo | None:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        return None
    return GGUFTokenizerInfo(
        model=meta.get("tokenizer.ggml.model", "gpt2"),
        pre=meta.get("tokenizer.ggml.pre"),
        tokens=list(tokens),
        token_type=meta.get("tokenizer.ggml.token_type"),
        merges=meta.get("tokenizer.ggml.merges"),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        eot_token_id=meta.get("tokenizer.ggml.eot_token_id"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        extra={k: v for k, v in meta.items() if k.startswith("tokenizer.") and not isinstance(v, list)},
        scores=meta.get("tokenizer.ggml.scores"),
        unknown_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        architecture=str(meta.get("general.architecture", "")),
    )


def _checked_reader(gguf: Any) -> type:
    """gguf.GGUFReader that, before it maps the tensors' data, checks that each one lies inside the
    file, so a truncated file is refused naming the first tensor (in file order) it cuts (gguf's own error names
    none)."""

    class CheckedReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list) -> None:
            size, cut = len(self.data), None
            for f in fields:
                try:
                    _, name, _, dims, raw_type, offset = f.parts
                    tensor = bytes(name).decode("utf-8", "replace")
                except (ValueError, TypeError):
                    continue  # gguf reports what it cannot parse itself
                try:
                    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_type[0]))]
                except (ValueError, KeyError):
                    raise ValueError(f"tensor {tensor!r} has type {int(raw_type[0])}, which is no GGML type "
                                     "(a corrupt file?)") from None
                start = int(start_offs + offset[0])
                end = start + int(np.prod(dims, dtype=np.int64)) * type_size // block
                if end > size and (cut is None or start < cut[1]):
                    cut = (tensor, start, end)
            if cut is not None:
                raise ValueError(f"tensor {cut[0]!r} needs bytes [{cut[1]}, {cut[2]}) but the file has {size}: "
                                 "the file is truncated")
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """(metadata key -> value, the GGUFReader)."""
    gguf = _import_gguf()
    path = Path(path)
    try:
        reader = _checked_reader(gguf)(path)
    except (ValueError, OSError, IndexError) as e:
        why = str(e)
        # numpy's complaints about views past the end of the memory map: the header is cut short.
        if "truncated" not in why and (isinstance(e, IndexError) or "reshape" in why or "larger dtype" in why):
            why = f"its header runs past the end of the file ({path.stat().st_size} bytes): truncated ({why})"
        raise CheckpointError(f"{path}: not a readable GGUF file: {why}") from None
    meta = {}
    for k, f in reader.fields.items():
        try:
            meta[k] = _value(f)
        except Exception:  # noqa: BLE001 - an odd field we do not need must not stop the load
            continue
    return meta, reader


def load_gguf(path: str | os.PathLike, model: ModelConfig | None = None
              ) -> tuple[ModelConfig, GGUFWeights, GGUFTokenizerInfo | None]:
    """Read a GGUF file: (model from the metadata, or `model` when given; HF-named weights,
    dequantized on access; tokenizer info from the metadata or None)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    meta, reader = read_metadata(path)
    arch = meta.get("general.architecture")
    tensors: dict[str, Any] = {}
    for t in reader.tensors:
        hf = gguf_to_hf_name(t.name, arch)
        if hf is None:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r}: not part of a "
                                  f"{'/'.join(SUPPORTED_ARCHS)} model")
        tensors[hf] = t
    shapes = {k: tuple(int(s) for s in reversed(t.shape.tolist())) for k, t in tensors.items()}
    if model is None:
        model = model_from_metadata(meta, shapes, path)
    drop = check_weights(model, shapes, str(path))
    for n in drop:
        del tensors[n]
    # convert_hf_to_gguf permutes Q/K rows for llama only (LlamaModel.modify_tensors); its Qwen2 and
    # Qwen3 converters keep HF's rotate-half order (llama.cpp runs them with NEOX-style RoPE).
    shift = GEMMA_NORM_SHIFT if arch == "gemma3" else 0.0
    return model, GGUFWeights(path, tensors, model, arch == "llama", shift), _tokenizer_info(meta)
