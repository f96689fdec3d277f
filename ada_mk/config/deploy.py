"""The deployment half of a configuration: which GPU, what batch, how much context."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .gpus import GpuSpec, detect_gpu, find_gpu, lookup_gpu
from .model import ModelConfig

MAX_BATCH = 8
DTYPES = ("bf16",)
DEFAULT_GPU = "H100"


@dataclass(frozen=True)
class DeployConfig:
    gpu: GpuSpec
    batch: int = 1
    max_context: int = 4096
    dtype: str = "bf16"


def deploy_for(model: ModelConfig, gpu: str | None, batch: int | None, max_context: int | None,
               base: DeployConfig | None = None) -> DeployConfig:
    """A DeployConfig from flags, then `base` (a config file's deploy section), then defaults:
    the GPU this machine has (else H100), batch 1, min(4096, max_position_embeddings)."""
    if gpu is not None:
        spec = lookup_gpu(gpu)
    elif base is not None:
        spec = base.gpu
    else:
        found = detect_gpu()
        spec = (find_gpu(found) if found else None) or lookup_gpu(DEFAULT_GPU)
    batch = batch if batch is not None else (base.batch if base is not None else 1)
    ctx = max_context if max_context is not None else (
        base.max_context if base is not None else min(4096, model.max_position_embeddings))
    if not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"must be in 1..{MAX_BATCH}", field="--batch", value=batch)
    if not 1 <= ctx <= model.max_position_embeddings:
        raise ConfigError(f"must be in 1..max_position_embeddings ({model.max_position_embeddings})",
                          field="--max-context", value=ctx)
    return DeployConfig(gpu=spec, batch=batch, max_context=ctx)
