"""The deployment half of a configuration: which GPU, what batch, how much context."""
from __future__ import annotations

from dataclasses import dataclass

from .gpus import GpuSpec

MAX_BATCH = 8
DTYPES = ("bf16",)


@dataclass(frozen=True)
class DeployConfig:
    gpu: GpuSpec
    batch: int = 1
    max_context: int = 4096
    dtype: str = "bf16"
