"""Reading a configuration: our own YAML format, or a Hugging Face `config.json` as published.

    model, deploy = load_config("configs/llama3-8b.yaml", gpu="L20", batch=4)

Our YAML format (strict: unknown keys, missing keys and wrong types are errors)::

    model:                      # required; field names are ModelConfig's (= HF config.json's)
      name: llama3-8b           # required; also the output folder name
      model_type: llama         # required; llama | mistral | qwen2 | qwen3 (gemma3_text: HF config.json only)
      hidden_size: 4096
      intermediate_size: 14336
      num_hidden_layers: 32
      num_attention_heads: 32
      num_key_value_heads: 8
      head_dim: 128             # optional, default hidden_size // num_attention_heads
      vocab_size: 128256
      rms_norm_eps: 1.0e-5
      rope_theta: 500000.0
      max_position_embeddings: 8192
      tie_word_embeddings: false  # optional, default false
      attention_bias: false       # optional, default true for qwen2, else false
      rope_scaling:               # optional (null or absent: none)
        rope_type: llama3         # "type" is accepted too; default | llama3
        factor: 8.0
        low_freq_factor: 1.0
        high_freq_factor: 4.0
        original_max_position_embeddings: 8192
    deploy:                     # optional; command-line flags override it
      gpu: H100                 # a GPUS name or an arch (sm_80, sm_89, sm_90); default H100
      batch: 1                  # 1..MAX_BATCH; default 1
      max_context: 4096         # 1..max_position_embeddings; default min(4096, that)
      dtype: bf16               # one of DTYPES; default bf16
      weights: fp8              # WEIGHT_FORMATS: bf16 | fp8 | int8 | int4; default bf16
      weights_group: 128        # input columns per scale, 0 (per row) or a multiple of 32 (int4:
                                # 32, 64 or 128); default per format (DEFAULT_GROUPS: fp8 0,
                                # int8 32, int4 128)

A Hugging Face `config.json` (recognised by a `.json` suffix or a top-level `model_type` /
`architectures` key) is read leniently: fields we don't use are ignored, missing ones get the
defaults transformers would apply. Fields that would change the network we generate in ways we
don't implement (another activation, an MLP bias, quantized weights other than FP8 E4M3,
unsupported RoPE types, a sliding window shorter than max_context) are errors rather than silently
ignored.

Every problem with the input raises ConfigError (one line naming file, field, value and what was
expected); nothing else escapes for bad input.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .deploy import DEFAULT_GPU, DEFAULT_GROUPS, DTYPES, MAX_BATCH, DeployConfig, weights_problem
from .errors import ConfigError
from .fields import Fields
from .gpus import GpuSpec, find_gpu, known_gpus_text
from .hf import is_hf_config, model_from_hf
from .model import ModelConfig
from .model_checks import SIZE_KEYS, model_type_of, read_rope_scaling, shape_checks
from .read import read_file

DEFAULT_BATCH = 1
DEFAULT_MAX_CONTEXT = 4096  # capped by the model's max_position_embeddings

_YAML_REQUIRED = ("name", "model_type", *SIZE_KEYS, "rms_norm_eps", "rope_theta")
_YAML_OPTIONAL = ("head_dim", "tie_word_embeddings", "attention_bias", "rope_scaling")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _model_from_yaml(f: Fields) -> ModelConfig:
    f.reject_unknown((*_YAML_REQUIRED, *_YAML_OPTIONAL))
    f.require(_YAML_REQUIRED)
    name = f.str("name")
    if not _SAFE_NAME.match(name):
        raise f.error("name", "must be a file-name-safe string (letters, digits, . _ + -), it names the output folder", name)
    model_type = model_type_of(f)
    if model_type == "gemma3_text":
        raise f.error("model_type", "gemma3_text is read from its HF config.json only (its window, "
                                    "layer pattern and norms have no YAML fields)", model_type)
    m: dict[str, Any] = {key: f.int(key) for key in SIZE_KEYS}
    head_dim = shape_checks(f, m, head_dim_explicit="head_dim" in f.data)
    rope = f.mapping("rope_scaling")
    return ModelConfig(
        name=name,
        model_type=model_type,
        head_dim=head_dim,
        rms_norm_eps=f.float("rms_norm_eps"),
        rope_theta=f.float("rope_theta"),
        tie_word_embeddings=f.bool("tie_word_embeddings", False),
        attention_bias=f.bool("attention_bias", model_type == "qwen2"),
        qk_norm=model_type == "qwen3",
        rope_scaling=None if rope is None else read_rope_scaling(
            Fields(rope, f.file, f.field("rope_scaling") + "."), strict=True),
        **m,
    )


# --------------------------------------------------------------------------- the deploy part


def _deploy(
    model: ModelConfig,
    section: Fields | None,
    *,
    gpu: str | None,
    batch: int | None,
    max_context: int | None,
    dtype: str | None,
    weights: str | None = None,
    weights_group: int | None = None,
) -> DeployConfig:
    """Each value from its flag if given, else the file's deploy section, else the default.
    Flag errors name the flag (`--batch`) and no file."""
    flags = Fields({"gpu": gpu, "batch": batch, "max-context": max_context, "dtype": dtype,
                    "weights-format": weights, "weights-group": weights_group}, "", "--", null_is_missing=True)

    def pick(flag: str, key: str) -> tuple[Fields, str] | None:
        if flags.has(flag):
            return flags, flag
        if section is not None and key in section.data:
            return section, key
        return None

    src = pick("gpu", "gpu")
    spec: GpuSpec | None = find_gpu(DEFAULT_GPU)
    if src is not None:
        f, key = src
        name = f.data[key]
        if not isinstance(name, str):
            raise f.error(key, "must be a string (quote it in YAML)", name)
        spec = find_gpu(name)
        if spec is None:
            raise f.error(key, f"unknown GPU; expected one of {known_gpus_text()}", name)
    assert spec is not None

    src = pick("batch", "batch")
    n_batch = DEFAULT_BATCH
    if src is not None:
        f, key = src
        n_batch = f.int(key)
        if n_batch > MAX_BATCH:
            raise f.error(key, f"must be in 1..{MAX_BATCH}", n_batch)

    max_pos = model.max_position_embeddings
    src = pick("max-context", "max_context")
    context = min(DEFAULT_MAX_CONTEXT, max_pos)
    if src is not None:
        f, key = src
        context = f.int(key)
        if context > max_pos:
            raise f.error(key, f"must be in 1..max_position_embeddings ({max_pos})", context)

    src = pick("dtype", "dtype")
    dt = "bf16"
    if src is not None:
        f, key = src
        dt = f.data[key]
        if not isinstance(dt, str) or dt not in DTYPES:
            raise f.error(key, f"unsupported dtype; expected one of {', '.join(DTYPES)}", dt)
    fmt, grp = _weights(flags, pick)
    return DeployConfig(gpu=spec, batch=n_batch, max_context=context, dtype=dt, weights=fmt, weights_group=grp)


def _weights(flags: Fields, pick: Callable[[str, str], tuple[Fields, str] | None]) -> tuple[str, int]:
    """The weights format and scale group, each from its flag, else the deploy section. A format
    without a group (or a format flag over the file's group) takes the format's default group
    (DEFAULT_GROUPS). Errors name the flag or the file's field."""
    src_fmt = pick("weights-format", "weights")
    src_grp = pick("weights-group", "weights_group")
    fmt = "bf16"
    if src_fmt is not None:
        f, key = src_fmt
        fmt = f.data[key]
        bad = weights_problem(fmt, 0)
        if bad is not None and bad[0] == "weights":
            raise f.error(key, bad[1], fmt)
    if src_grp is None or (src_fmt is not None and src_fmt[0] is flags and src_grp[0] is not flags):
        return fmt, DEFAULT_GROUPS[fmt]
    f, key = src_grp
    grp = f.data[key]
    bad = weights_problem(fmt, grp)
    if bad is not None:
        raise f.error(key, bad[1], grp)
    return fmt, grp


# --------------------------------------------------------------------------- entry point


def load_config(
    path: str | os.PathLike,
    *,
    gpu: str | None = None,
    batch: int | None = None,
    max_context: int | None = None,
    dtype: str | None = None,
    weights: str | None = None,
    weights_group: int | None = None,
) -> tuple[ModelConfig, DeployConfig]:
    """Read a model + deployment configuration.

    `path` is our YAML format or an HF `config.json`. The keyword arguments (the CLI's flags)
    override the file's `deploy:` section; without either, the deployment is H100, batch 1,
    max_context = min(4096, max_position_embeddings), bf16 activations and bf16 weights.
    `weights` / `weights_group` are --weights-format / --weights-group.

    Raises ConfigError (and nothing else) for any bad input.
    """
    file = os.fspath(path)
    p = Path(file)
    data = read_file(p, file)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be a mapping (with model: and deploy:, or an HF config.json), not {type(data).__name__}",
            file=file,
        )
    window: int | None = None
    deploy_section: Fields | None = None
    if is_hf_config(data, p):
        model, window = model_from_hf(data, file, p)
    else:
        top = Fields(data, file)
        top.reject_unknown(("model", "deploy"))
        top.require(("model",), "expected a mapping of ModelConfig fields")
        model_map = top.mapping("model")
        if model_map is None:
            raise top.error("model", "must be a mapping of ModelConfig fields", None)
        model = _model_from_yaml(Fields(model_map, file, "model."))
        if "deploy" in data:
            deploy_map = top.mapping("deploy")
            if deploy_map is None:
                raise top.error("deploy", "must be a mapping (gpu, batch, max_context, dtype, weights,"
                                          " weights_group)", None)
            deploy_section = Fields(deploy_map, file, "deploy.")
            deploy_section.reject_unknown(("gpu", "batch", "max_context", "dtype", "weights", "weights_group"))

    deploy = _deploy(model, deploy_section, gpu=gpu, batch=batch, max_context=max_context, dtype=dtype,
                     weights=weights, weights_group=weights_group)

    # We generate full attention. With a sliding window W, a query attends to keys at distance
    # < W, so the two agree exactly while max_context <= W; beyond that they would differ.
    if window is not None and window < deploy.max_context:
        raise ConfigError(
            f"attention is generated as full attention, which equals sliding-window attention only"
            f" up to max_context {window}; got max_context {deploy.max_context} (lower --max-context)",
            file=file, field="sliding_window", value=window,
        )
    return model, deploy
