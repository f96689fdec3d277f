"""One entry point for any checkpoint path: a GGUF file or an HF safetensors folder.

    ck = load_checkpoint("Llama-3.1-8B-Instruct-FP8/")
    ck.weights["model.layers.0.mlp.up_proj.weight"]    # float32, dequantized: what the bf16 kernel packs
    ck.quantized["model.layers.0.mlp.up_proj.weight"]  # QuantizedMatrix, as stored (fp8, group = K)

`weights` is every tensor the model needs, as float32 (8-bit and other quantized tensors
dequantized exactly: W = q x scale). `quantized` holds the weights stored in 8 bits, read as they
are into ada_mk.quant.QuantizedMatrix (8-bit values, float32 scales per row and group of columns):
FP8 E4M3 safetensors (compressed-tensors, block FP8) and GGUF Q8_0 tensors; it is empty for
bf16/fp16/fp32 checkpoints. `int4` holds the weights stored in 4 bits, as
ada_mk.quant.Int4Matrix (codes 0..15, float32 scales and offsets per row and group of 32 columns):
GGUF Q4_0, Q4_1 and Q4_K tensors, and the linears of AWQ / GPTQ folders (config.json's
quantization_config; ada_mk.checkpoints.int4_safetensors). Other GGUF types (Q6_K, Q5_K, ...)
appear only in `weights`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config.model import ModelConfig
from .errors import CheckpointError


@dataclass
class Checkpoint:
    model: ModelConfig
    weights: Mapping[str, Any]  # HF name -> float32 ndarray (read lazily)
    path: Path
    kind: str  # "gguf" or "safetensors"
    tokenizer_source: Any = None  # GGUFTokenizerInfo, or the folder holding tokenizer.json
    quantized: Mapping[str, Any] = field(default_factory=dict)  # HF name -> QuantizedMatrix (read lazily)
    int4: Mapping[str, Any] = field(default_factory=dict)  # HF name -> Int4Matrix (read lazily)

    def tokenizer(self):
        """The checkpoint's tokenizer (needs the `tokenizers` package)."""
        from .tokenizer import Tokenizer

        if self.tokenizer_source is None:
            raise CheckpointError(f"{self.path}: carries no tokenizer (no tokenizer.json / tokenizer metadata)")
        if isinstance(self.tokenizer_source, Path):
            return Tokenizer.from_folder(self.tokenizer_source)
        return Tokenizer.from_gguf_info(self.tokenizer_source)


def load_checkpoint(path: str | os.PathLike, model: ModelConfig | None = None) -> Checkpoint:
    """A GGUF file (by suffix or magic) or an HF folder (config.json + *.safetensors); a single
    .safetensors file is read from its folder. `model` overrides the checkpoint's own config."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(f"{p}: neither a GGUF file nor an HF checkpoint folder")
        from .gguf_file import load_gguf

        m, w, tok = load_gguf(p, model)
        return Checkpoint(m, w, p, "gguf", tok, w.quantized, w.int4)
    tok = p if (p / "tokenizer.json").exists() else None
    from .int4_safetensors import is_int4_folder, load_int4_checkpoint

    if p.is_dir() and is_int4_folder(p):
        m, w, linears = load_int4_checkpoint(p, model)
        return Checkpoint(m, w, p, "safetensors", tok, {}, linears)
    from .safetensors_dir import load_safetensors_dir

    m, w = load_safetensors_dir(p, model)
    return Checkpoint(m, w, p, "safetensors", tok, w.quantized)
