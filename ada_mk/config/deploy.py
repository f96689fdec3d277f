"""The deployment half of a configuration: which GPU, what batch, how much context."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .gpus import GpuSpec, detect_gpu, find_gpu, lookup_gpu
from .model import ModelConfig

MAX_BATCH = 8
DTYPES = ("bf16",)
DEFAULT_GPU = "H100"

# How the linear stages' weights stream (docs/quantized-weights.md): bf16, 8-bit codes (fp8: E4M3;
# int8: symmetric integers) with float32 scales per row or per group of input columns, or 4-bit
# codes (int4) with a bf16 scale and offset per group.
WEIGHT_FORMATS = ("bf16", "fp8", "int8", "int4")
# The scale group each format takes when none is given: 0 is one scale per row (fp8), 32 is GGUF
# Q8_0's group (int8), 128 the usual AWQ / GPTQ group (int4); bf16 has no scales.
DEFAULT_GROUPS = {"bf16": 0, "fp8": 0, "int8": 32, "int4": 128}
GROUP_MULTIPLE = 32  # a scale group is a whole number of the kernel's 32-column k-halves
INT4_GROUPS = (32, 64, 128)  # the groups 4-bit sources come in (GGUF Q4_*: 32; AWQ / GPTQ: 64, 128)


# The LM head of an int4 plan streams in 8 bits: int8 with a float32 scale per 32 columns (GGUF
# Q8_0's form). 4-bit checkpoints keep their output layer above 4 bits (llama.cpp's Q4 files: Q6_K or
# Q8_0; AWQ / GPTQ: fp16), and a 4-bit head changes greedy tokens where the layers in 4 bits do not.
# See docs/experiments.md, "The LM head of int4 plans in 8 bits".
HEAD_FORMATS = {"int4": ("int8", 32)}


def stage_format(kind: str, weights: str, group: int) -> tuple[str, int]:
    """(format, scale group) that stage `kind` (ada_mk.search.plan.LINEAR_KINDS) streams in a plan of
    `weights` / `group`: the plan's, except an int4 plan's LM head (HEAD_FORMATS)."""
    if kind == "lm_head" and weights in HEAD_FORMATS:
        return HEAD_FORMATS[weights]
    return weights, group


def weights_problem(weights: object, group: object) -> tuple[str, str] | None:
    """(field, what was expected) when `weights` / `group` are not a valid weights format and scale
    group (field "weights" or "weights_group"), else None."""
    if not isinstance(weights, str) or weights not in WEIGHT_FORMATS:
        return "weights", f"unknown weights format; expected one of {', '.join(WEIGHT_FORMATS)}"
    if weights == "int4" and (isinstance(group, bool) or group not in INT4_GROUPS):
        return "weights_group", f"int4 weights take a scale group of {', '.join(map(str, INT4_GROUPS))}"
    if not isinstance(group, int) or isinstance(group, bool) or group < 0 or group % GROUP_MULTIPLE:
        return "weights_group", f"must be 0 (one scale per row) or a positive multiple of {GROUP_MULTIPLE}"
    if weights == "bf16" and group:
        return "weights_group", "bf16 weights have no scales: the group must be 0"
    if weights == "int8" and not group:
        return "weights_group", (f"int8 weights need a scale group (a positive multiple of {GROUP_MULTIPLE},"
                                 f" default {DEFAULT_GROUPS['int8']}): one scale per row loses too much precision")
    return None


@dataclass(frozen=True)
class DeployConfig:
    gpu: GpuSpec
    batch: int = 1
    max_context: int = 4096
    dtype: str = "bf16"
    weights: str = "bf16"  # WEIGHT_FORMATS: how the linear stages' weights stream
    weights_group: int = 0  # input columns per scale (0: one per row); DEFAULT_GROUPS[weights]

    def __post_init__(self) -> None:
        bad = weights_problem(self.weights, self.weights_group)
        if bad is not None:
            value = self.weights if bad[0] == "weights" else self.weights_group
            raise ConfigError(bad[1], field=f"deploy.{bad[0]}", value=value)


def weights_suffix(weights: str, group: int) -> str:
    """What a quantized format adds to the generated files' names: `_fp8`, `_int8`, `_int4`, with
    `g<group>` where the group is not the format's default (`_fp8g128`, `_int4g32`); nothing for bf16."""
    if weights == "bf16":
        return ""
    return f"_{weights}" + (f"g{group}" if group != DEFAULT_GROUPS[weights] else "")


def resolve_weights(weights: str | None, group: int | None, *, base: DeployConfig | None = None,
                    weights_field: str = "--weights-format", group_field: str = "--weights-group") -> tuple[str, int]:
    """(format, scale group) from flags, then `base`, then the defaults (bf16; the format's default
    group, DEFAULT_GROUPS). A group given without a format applies to base's format. A format
    given without a group takes that format's default group. Bad values raise ConfigError
    naming `weights_field` or `group_field`."""
    fmt = weights if weights is not None else (base.weights if base is not None else "bf16")
    if group is not None:
        grp = group
    elif weights is not None and (base is None or weights != base.weights):
        grp = DEFAULT_GROUPS.get(fmt, 0) if isinstance(fmt, str) else 0
    else:
        grp = base.weights_group if base is not None else DEFAULT_GROUPS.get(fmt, 0)
    bad = weights_problem(fmt, grp)
    if bad is not None:
        name, value = (weights_field, fmt) if bad[0] == "weights" else (group_field, grp)
        raise ConfigError(bad[1], field=name, value=value)
    return fmt, grp


def deploy_for(model: ModelConfig, gpu: str | None, batch: int | None, max_context: int | None,
               base: DeployConfig | None = None, *, weights: str | None = None,
               weights_group: int | None = None) -> DeployConfig:
    """A DeployConfig from flags, then `base` (a config file's deploy section), then defaults:
    the GPU this machine has (else H100), batch 1, min(4096, max_position_embeddings), bf16
    weights (resolve_weights)."""
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
    fmt, grp = resolve_weights(weights, weights_group, base=base)
    return DeployConfig(gpu=spec, batch=batch, max_context=ctx, weights=fmt, weights_group=grp)
