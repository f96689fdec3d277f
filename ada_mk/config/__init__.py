"""Configuration: what model, on what GPU, at what batch -- and reading it from files."""
from .deploy import DEFAULT_GROUPS, DTYPES, MAX_BATCH, WEIGHT_FORMATS, DeployConfig, deploy_for, resolve_weights, weights_suffix
from .errors import ConfigError
from .gpus import ARCH_ALIASES, GPUS, GpuSpec, lookup_gpu
from .load import load_config
from .model import ModelConfig, RopeScaling

__all__ = [
    "ARCH_ALIASES",
    "DEFAULT_GROUPS",
    "DTYPES",
    "GPUS",
    "MAX_BATCH",
    "WEIGHT_FORMATS",
    "ConfigError",
    "DeployConfig",
    "GpuSpec",
    "ModelConfig",
    "RopeScaling",
    "deploy_for",
    "load_config",
    "lookup_gpu",
    "resolve_weights",
    "weights_suffix",
]
