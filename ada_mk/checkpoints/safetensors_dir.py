"""HF checkpoint folders: config.json plus *.safetensors (one file, or shards listed in
model.safetensors.index.json). The safetensors format is read directly (8-byte little-endian
header length, a JSON header, raw little-endian data), so no extra package is needed and bf16
works with NumPy alone.

    model, weights = load_safetensors_dir("path/to/SmolLM2-135M")
    weights["model.norm.weight"]        # float32 ndarray, read from the file on access

FP8 E4M3 checkpoints (config.json's quantization_config: compressed-tensors "float-quantized", or
"fp8" with weight_scale / weight_scale_inv; see ada_mk.quant.formats) load the same way: each FP8
weight is paired with its scale tensor, `weights[name]` is W = q x scale in float32, and
`weights.quantized[name]` the stored QuantizedMatrix. Activation and KV-cache scales are ignored.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, load_config
from ..config.model import ModelConfig
from ..quant import (FP8Scheme, QuantFormatError, QuantizedMatrix, QuantizedTensors, decode_e4m3, fp8_matrix,
                     fp8_scheme)
from ..quant.formats import IGNORED_SCALES, SCALE_TENSOR, scale_layout, scale_name
from .errors import CheckpointError
from .names import check_weights

# safetensors dtype -> numpy dtype of the stored bits
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),  # float8_e4m3fn bit patterns, read through ada_mk.quant
}
_REFUSED = {
    "F8_E5M2": "FP8 E5M2 weights are unsupported; ada-mk reads FP8 E4M3 (float8_e4m3fn)",
    "I8": "int8 weights are unsupported (no int8 checkpoint scheme is read); ada-mk reads FP8 E4M3 "
          "and bf16/fp16/fp32 weights",
}
# int32 tensors only 4-bit checkpoints carry (AWQ / GPTQ qweight, qzeros, g_idx): read_header takes
# them where asked to (allow_int32), the model loader never does
_INT32 = {"I32": np.dtype("<i4")}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str | os.PathLike, allow_int32: bool = False) -> dict[str, TensorInfo]:
    """The tensors a .safetensors file holds (name -> TensorInfo), without reading their data.
    `allow_int32`: accept I32 tensors too (the packed tensors of AWQ / GPTQ checkpoints)."""
    dtypes = {**_DTYPES, **_INT32} if allow_int32 else _DTYPES
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise CheckpointError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = d["dtype"], tuple(int(s) for s in d["shape"]), d["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype in _REFUSED:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}: {_REFUSED[dtype]}")
        if dtype not in dtypes:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of {', '.join(dtypes)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtypes[dtype].itemsize
        if b - a != nbytes or a < 0 or base + b > size:
            raise CheckpointError(f"{path}: tensor {name!r} has data offsets [{a}, {b}] that do not fit "
                                  f"its shape {shape} ({dtype}) or the file")
        out[name] = TensorInfo(path, dtype, shape, base + a, nbytes)
    return out


def read_raw(info: TensorInfo) -> np.ndarray:
    """One tensor's stored bits, as the NumPy dtype of _DTYPES (bf16 and FP8 as unsigned integers;
    I32 as int32)."""
    dtype = _DTYPES.get(info.dtype) or _INT32[info.dtype]
    count = info.nbytes // dtype.itemsize
    return np.fromfile(info.file, dtype=dtype, count=count, offset=info.start).reshape(info.shape)


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a float32 array (bf16 widened exactly, f16 and f64 converted; FP8 E4M3
    decoded, unscaled)."""
    raw = read_raw(info)
    if info.dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if info.dtype == "F8_E4M3":
        return decode_e4m3(raw)
    return raw.astype(np.float32)


@dataclass(frozen=True)
class FP8Tensor:
    """An FP8 weight and the scale tensor it is multiplied by."""
    weight: TensorInfo
    scale: TensorInfo
    scheme: FP8Scheme


def read_fp8(name: str, t: FP8Tensor) -> QuantizedMatrix:
    """The QuantizedMatrix of an FP8 weight, as stored (the file's E4M3 bytes, its scales)."""
    try:
        return fp8_matrix(read_raw(t.weight), read_tensor(t.scale), t.scheme, name)
    except QuantFormatError as e:
        raise CheckpointError(f"{t.weight.file}: {e}") from None


class LazyWeights(Mapping):
    """name -> float32 ndarray, each tensor read from its file when asked for (so packing an
    8B model never holds two full float32 copies). FP8 weights come dequantized (W = q x scale);
    `quantized` maps their names to the stored QuantizedMatrix."""

    def __init__(self, infos: Mapping[str, TensorInfo], fp8: Mapping[str, FP8Tensor] | None = None) -> None:
        self.infos = dict(infos)
        self.fp8 = dict(fp8 or {})

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.fp8:
            return read_fp8(name, self.fp8[name]).dequantize()
        return read_tensor(self.infos[name])

    @property
    def quantized(self) -> QuantizedTensors:
        """The FP8 weights as stored: name -> QuantizedMatrix, read on access."""
        return QuantizedTensors([n for n in self.infos if n in self.fp8], lambda n: read_fp8(n, self.fp8[n]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.infos.items()}


def _shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            data = json.loads(index.read_text())
            files = sorted(set(data["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index}: malformed index (expected a 'weight_map' of tensor -> file)") from None
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise CheckpointError(f"{index}: shard {missing[0]!r} is missing from {folder}")
        return [folder / f for f in files]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files (and no model.safetensors.index.json)")
    return files


def load_safetensors_dir(path: str | os.PathLike, model: ModelConfig | None = None
                         ) -> tuple[ModelConfig, LazyWeights]:
    """Read an HF checkpoint folder. `model` overrides the folder's config.json (needed when it has
    none). Every tensor's name and shape is checked against the model before any data is read."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected an HF checkpoint: config.json + *.safetensors)")
    if model is None:
        cfg = folder / "config.json"
        if not cfg.exists():
            raise CheckpointError(f"{folder}: no config.json; pass the model's config explicitly")
        try:
            model, _ = load_config(cfg)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    infos: dict[str, TensorInfo] = {}
    for f in _shard_files(folder):
        for name, info in read_header(f).items():
            if name in infos:
                raise CheckpointError(f"{folder}: tensor {name!r} appears in both {infos[name].file.name} and {f.name}")
            infos[name] = info
    fp8 = _pair_fp8(infos, _fp8_scheme(folder), folder)
    drop = check_weights(model, {k: v.shape for k, v in infos.items()}, str(folder))
    for n in drop:
        del infos[n]
        fp8.pop(n, None)
    return model, LazyWeights(infos, fp8)


def _fp8_scheme(folder: Path) -> FP8Scheme | None:
    """The FP8 scheme of config.json's quantization_config (None without one, or without a
    readable config.json)."""
    cfg = folder / "config.json"
    if not cfg.exists():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # only reached with an explicit model (load_config reports it otherwise)
    try:
        return fp8_scheme(data.get("quantization_config") if isinstance(data, dict) else None)
    except QuantFormatError as e:
        raise CheckpointError(f"{cfg}: {e}") from None


def _pair_fp8(infos: dict[str, TensorInfo], scheme: FP8Scheme | None, folder: Path) -> dict[str, FP8Tensor]:
    """Pair each FP8 weight with its scale tensor, taking the scales (and the ignored activation /
    KV-cache scales) out of `infos`; what is left are the model's tensors by name."""
    fp8: dict[str, FP8Tensor] = {}
    for name, info in infos.items():
        if info.dtype != "F8_E4M3":
            continue
        if scheme is None:
            raise CheckpointError(f"{info.file}: tensor {name!r} is F8_E4M3 but {folder / 'config.json'} has no "
                                  "quantization_config saying how it is scaled")
        if not name.endswith(".weight"):
            raise CheckpointError(f"{info.file}: tensor {name!r} is F8_E4M3; only '.weight' matrices may be FP8")
        sname = scale_name(name, scheme)
        if sname not in infos:
            raise CheckpointError(f"{info.file}: FP8 tensor {name!r} has no scale tensor {sname!r} "
                                  f"({scheme.describe()})")
        scale = infos[sname]
        if scale.dtype not in ("F32", "BF16", "F16"):
            raise CheckpointError(f"{scale.file}: tensor {sname!r} has dtype {scale.dtype}; expected F32, BF16 or F16")
        if len(info.shape) != 2:
            raise CheckpointError(f"{info.file}: tensor {name!r} is F8_E4M3 with shape {list(info.shape)}; "
                                  "expected a 2-D matrix")
        try:
            scale_layout(scale.shape, (info.shape[0], info.shape[1]), scheme, name)
        except QuantFormatError as e:
            raise CheckpointError(f"{scale.file}: {e}") from None
        fp8[name] = FP8Tensor(info, scale, scheme)
    used = {scale_name(n, scheme) for n in fp8} if scheme else set()
    for name in [n for n in infos if SCALE_TENSOR.search(n)]:
        if name in used or (scheme is not None and IGNORED_SCALES.search(name)):
            del infos[name]
            continue
        weight = name[: name.rindex(".")] + ".weight"
        if scheme is None:
            why = f"{folder / 'config.json'} has no quantization_config"
        elif not name.endswith("." + scheme.scale_suffix):
            why = f"{scheme.describe()} scales weights by '*.{scheme.scale_suffix}'"
        else:
            got = infos[weight].dtype if weight in infos else "missing"
            why = f"its weight {weight!r} is {got}, not F8_E4M3"
        raise CheckpointError(f"{infos[name].file}: unexpected scale tensor {name!r}: {why}")
    return fp8
