"""The 4-bit linears of an AWQ or GPTQ checkpoint folder (config.json with an "awq" or "gptq"
`quantization_config`, *.safetensors holding X.qweight / X.qzeros / X.scales [/ X.g_idx]), read as
ada_mk.quant.Int4Matrix one linear at a time:

    scheme, linears = load_int4_safetensors("Llama-3.2-1B-AWQ/")
    linears["model.layers.0.mlp.up_proj.weight"]   # Int4Matrix [out, in]; .dequantize() -> float32

This stands beside load_checkpoint, which still refuses AWQ / GPTQ folders: the model's other
tensors (embeddings, norms, an unquantized lm_head) load through it only once the planner and kernel
take int4 weights. The layouts and their exactness are ada_mk.quant.awq_gptq's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..quant import Int4Matrix, Int4Scheme, QuantFormatError, QuantizedTensors, int4_matrix, int4_scheme
from .errors import CheckpointError
from .safetensors_dir import TensorInfo, _shard_files, read_header, read_raw, read_tensor

PACKED = ("qweight", "qzeros", "scales", "g_idx")


def read_int4_scheme(folder: str | os.PathLike) -> Int4Scheme:
    """The Int4Scheme of a folder's config.json `quantization_config` (CheckpointError, one line
    naming the file and field, when there is none or it is not 4-bit AWQ / GPTQ)."""
    cfg = Path(folder) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg}: not a readable config.json: {e}") from None
    qc = data.get("quantization_config") if isinstance(data, dict) else None
    if qc is None:
        raise CheckpointError(f"{cfg}: no quantization_config (an AWQ / GPTQ checkpoint names its method there)")
    try:
        return int4_scheme(qc)
    except QuantFormatError as e:
        raise CheckpointError(f"{cfg}: {e}") from None


def load_int4_safetensors(folder: str | os.PathLike) -> tuple[Int4Scheme, QuantizedTensors]:
    """(the checkpoint's scheme, "X.weight" -> Int4Matrix of every linear X that has X.qweight),
    each matrix read from the files when asked for."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected config.json + *.safetensors)")
    scheme = read_int4_scheme(folder)
    infos: dict[str, TensorInfo] = {}
    for f in _shard_files(folder):
        infos.update(read_header(f, allow_int32=True))
    prefixes = sorted(n[: -len(".qweight")] for n in infos if n.endswith(".qweight"))
    if not prefixes:
        raise CheckpointError(f"{folder}: {scheme.describe()} checkpoint without any '*.qweight' tensor")

    def read(name: str) -> Int4Matrix:
        prefix = name[: -len(".weight")]
        tensors = {}
        for suffix in PACKED:
            info = infos.get(f"{prefix}.{suffix}")
            if info is not None:  # fp16 / bf16 scales widen to float32 exactly; packed words stay int32
                tensors[f"{prefix}.{suffix}"] = read_tensor(info) if suffix == "scales" else read_raw(info)
        try:
            return int4_matrix(tensors, prefix, scheme)
        except QuantFormatError as e:
            file = infos[f"{prefix}.qweight"].file
            raise CheckpointError(f"{file}: {e}") from None

    return scheme, QuantizedTensors([p + ".weight" for p in prefixes], read)
