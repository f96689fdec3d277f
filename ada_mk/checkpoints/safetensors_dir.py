"""HF checkpoint folders: config.json plus *.safetensors (one file, or shards listed in
model.safetensors.index.json). The safetensors format is read directly (8-byte little-endian
header length, a JSON header, raw little-endian data), so no extra package is needed and bf16
works with NumPy alone.

    model, weights = load_safetensors_dir("path/to/SmolLM2-135M")
    weights["model.norm.weight"]        # float32 ndarray, read from the file on access
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
from .errors import CheckpointError
from .names import check_weights

# safetensors dtype -> (numpy dtype of the stored bits, bytes per element)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """The tensors a .safetensors file holds (name -> TensorInfo), without reading their data."""
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
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of {', '.join(_DTYPES)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if b - a != nbytes or a < 0 or base + b > size:
            raise CheckpointError(f"{path}: tensor {name!r} has data offsets [{a}, {b}] that do not fit "
                                  f"its shape {shape} ({dtype}) or the file")
        out[name] = TensorInfo(path, dtype, shape, base + a, nbytes)
    return out


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a float32 array (bf16 widened exactly, f16 and f64 converted)."""
    raw = np.fromfile(info.file, dtype=_DTYPES[info.dtype], count=info.nbytes // _DTYPES[info.dtype].itemsize,
                      offset=info.start).reshape(info.shape)
    if info.dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


class LazyWeights(Mapping):
    """name -> float32 ndarray, each tensor read from its file when asked for (so packing an
    8B model never holds two full float32 copies)."""

    def __init__(self, infos: Mapping[str, TensorInfo]) -> None:
        self.infos = dict(infos)

    def __getitem__(self, name: str) -> np.ndarray:
        return read_tensor(self.infos[name])

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
    drop = check_weights(model, {k: v.shape for k, v in infos.items()}, str(folder))
    for n in drop:
        del infos[n]
    return model, LazyWeights(infos)
