"""Configuration: what model, on what GPU, at what batch -- and reading it from files."""
from .deploy import DTYPES, MAX_BATCH, DeployConfig, deploy_for
from .errors import ConfigError
from .gpus import ARCH_ALIASES, GPUS, GpuSpec, lookup_gpu
from .load import load_config
from .model import ModelConfig, RopeScaling

__all__ = [
    "ARCH_ALIASES",
    "DTYPES",
    "GPUS",
    "MAX_BATCH",
    "ConfigError",
    "DeployConfig",
    "GpuSpec",
    "ModelConfig",
    "RopeScaling",
    "deploy_for",
    "load_config",
    "lookup_gpu",
]
