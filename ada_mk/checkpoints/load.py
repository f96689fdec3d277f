"""One entry point for any checkpoint path: a GGUF file or an HF safetensors folder."""
from __future__ import annotations

import os
from dataclasses import dataclass
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
        return Checkpoint(m, w, p, "gguf", tok)
    from .safetensors_dir import load_safetensors_dir

    m, w = load_safetensors_dir(p, model)
    tok = p if (p / "tokenizer.json").exists() else None
    return Checkpoint(m, w, p, "safetensors", tok)
