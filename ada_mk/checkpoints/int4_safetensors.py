"""The 4-bit linears of an AWQ or GPTQ checkpoint folder (config.json with an "awq" or "gptq"
`quantization_config`, *.safetensors holding X.qweight / X.qzeros / X.scales [/ X.g_idx]), read as
ada_mk.quant.Int4Matrix one linear at a time:

    scheme, linears = load_int4_safetensors("Llama-3.2-1B-AWQ/")
    linears["model.layers.0.mlp.up_proj.weight"]   # Int4Matrix [out, in]; .dequantize() -> float32

load_checkpoint reads such a folder through load_int4_checkpoint: the 4-bit linears as Int4Matrix
(Checkpoint.int4, which an int4 plan streams as stored) and, dequantized, among the float weights
with the model's other tensors (embeddings, norms, an unquantized lm_head). The layouts and their
exactness are ada_mk.quant.awq_gptq's.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..quant import Int4Matrix, Int4Scheme, QuantFormatError, QuantizedTensors, int4_matrix, int4_scheme
from ..config import ConfigError, ModelConfig, load_config
from .errors import CheckpointError
from .names import check_weights
from .safetensors_dir import LazyWeights, TensorInfo, _shard_files, read_header, read_raw, read_tensor

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


def is_int4_folder(folder: Path) -> bool:
    """Whether `folder`'s config.json names an AWQ or GPTQ quantization_config."""
    try:
        qc = json.loads((folder / "config.json").read_text()).get("quantization_config")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    return isinstance(qc, dict) and qc.get("quant_method") in ("awq", "gptq")


class Int4Weights(Mapping):
    """The float weights of an AWQ / GPTQ folder by HF name: its plain tensors (LazyWeights) and its
    4-bit linears dequantized (Int4Matrix.dequantize: exact in float32), each read when asked for."""

    def __init__(self, plain: LazyWeights, linears: QuantizedTensors) -> None:
        self.plain, self.linears = plain, linears

    def __getitem__(self, name: str) -> Any:
        return self.linears[name].dequantize() if name in self.linears else self.plain[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.plain
        yield from self.linears

    def __len__(self) -> int:
        return len(self.plain) + len(self.linears)

    @property
    def quantized(self) -> dict:
        return {}


def load_int4_checkpoint(folder: str | os.PathLike, model: ModelConfig | None = None
                         ) -> tuple[ModelConfig, Int4Weights, QuantizedTensors]:
    """(model, float weights, the 4-bit linears as Int4Matrix) of an AWQ / GPTQ folder; `model`
    overrides its config.json. Every tensor's name and shape is checked against the model (a linear
    by its qweight's shape) before any data is read."""
    folder = Path(folder)
    if model is None:
        try:
            model, _ = load_config(folder / "config.json")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    scheme, linears = load_int4_safetensors(folder)
    infos: dict[str, TensorInfo] = {}
    for f in _shard_files(folder):
        infos.update(read_header(f, allow_int32=True))
    shapes = {}
    for name in linears:
        qw = infos[name[: -len(".weight")] + ".qweight"].shape  # AWQ [in, out / 8]; GPTQ [in / 8, out]
        shapes[name] = (qw[1] * 8, qw[0]) if scheme.method == "awq" else (qw[1], qw[0] * 8)
    packed = {f"{n[: -len('.weight')]}.{x}" for n in linears for x in PACKED}
    plain = {k: v for k, v in infos.items() if k not in packed}
    drop = check_weights(model, {**{k: v.shape for k, v in plain.items()}, **shapes}, str(folder))
    for n in drop:
        plain.pop(n, None)
    return model, Int4Weights(LazyWeights(plain), linears), linears
