"""Reading a configuration: our own YAML format, or a Hugging Face `config.json` as published.

    model, deploy = load_config("configs/llama3-8b.yaml", gpu="L20", batch=4)

Our YAML format (strict: unknown keys, missing keys and wrong types are errors)::

    model:                      # required; field names are ModelConfig's (= HF config.json's)
      name: llama3-8b           # required; also the output folder name
      model_type: llama         # required; llama | mistral | qwen2
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

A Hugging Face `config.json` (recognised by a `.json` suffix or a top-level `model_type` /
`architectures` key) is read leniently: fields we don't use are ignored, missing ones get the
defaults transformers would apply. Fields that would change the network we generate in ways we
don't implement (another activation, an MLP bias, quantized weights, unsupported RoPE types, a
sliding window shorter than max_context) are errors rather than silently ignored.

Every problem with the input raises ConfigError (one line naming file, field, value and what was
expected); nothing else escapes for bad input.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .deploy import DTYPES, MAX_BATCH, DeployConfig
from .errors import _NO_VALUE, ConfigError
from .gpus import GpuSpec, find_gpu, known_gpus_text
from .model import ModelConfig, RopeScaling

DEFAULT_GPU = "H100"
DEFAULT_BATCH = 1
DEFAULT_MAX_CONTEXT = 4096  # capped by the model's max_position_embeddings
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3")

# Sizes index device memory with 32-bit arithmetic in the generated kernel.
MAX_SIZE = 2**31 - 1
# hidden_size, intermediate_size and head_dim are read with 16-byte vector loads (8 bf16).
VECTOR_ELEMS = 8
# Configs are a few KB; anything much larger is the wrong file (say, a weights file).
MAX_FILE_BYTES = 4 * 1024 * 1024

_REQUIRED: Any = object()


# --------------------------------------------------------------------------- typed field reads


class _Fields:
    """Typed reads from one mapping of the input; errors name the file and the dotted field.

    `null_is_missing`: HF configs write `null` for "use the default" (head_dim,
    num_key_value_heads, ...); in our strict YAML a null is a wrong type.
    """

    def __init__(self, data: Mapping, file: str, prefix: str = "", *, null_is_missing: bool = False):
        self.data = data
        self.file = file
        self.prefix = prefix
        self.null_is_missing = null_is_missing

    def field(self, key: Any) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: Any, expected: str, value: Any = _NO_VALUE) -> ConfigError:
        return ConfigError(expected, file=self.file, field=self.field(key), value=value)

    def has(self, key: str) -> bool:
        return key in self.data and not (self.null_is_missing and self.data[key] is None)

    def _missing(self, key: str, default: Any, what: str) -> Any:
        if default is _REQUIRED:
            raise self.error(key, f"missing; expected {what}")
        return default

    def int(self, key: str, default: Any = _REQUIRED) -> int:
        """A positive integer that fits the kernel's 32-bit indexing (bool is not an int)."""
        what = "a positive integer"
        if not self.has(key):
            return self._missing(key, default, what)
        v = self.data[key]
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(key, f"must be {what}", v)
        if not 0 < v <= MAX_SIZE:
            raise self.error(key, f"must be {what} <= {MAX_SIZE}", v)
        return v

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        """A finite number > 0 (an integer is fine: `rope_theta: 500000`)."""
        what = "a finite number > 0"
        if not self.has(key):
            return self._missing(key, default, what)
        v = self.data[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            if isinstance(v, str) and re.fullmatch(r"[0-9.]+[eE][0-9]+|[0-9]+[eE]-?[0-9]+", v.strip()):
                # PyYAML (YAML 1.1) reads 1e-5 as a string; 1.0e-5 is a float.
                raise self.error(key, f"must be {what} (YAML reads this as a string; write it as 1.0e-5)", v)
            raise self.error(key, f"must be {what}", v)
        try:
            x = float(v)
        except OverflowError:
            raise self.error(key, f"must be {what}", v) from None
        if not (math.isfinite(x) and x > 0):
            raise self.error(key, f"must be {what}", v)
        return x

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        if not self.has(key):
            return self._missing(key, default, "true or false")
        v = self.data[key]
        if not isinstance(v, bool):
            raise self.error(key, "must be true or false", v)
        return v

    def str(self, key: str, default: Any = _REQUIRED) -> str:
        if not self.has(key):
            return self._missing(key, default, "a string")
        v = self.data[key]
        if not isinstance(v, str) or not v:
            raise self.error(key, "must be a non-empty string", v)
        return v

    def mapping(self, key: str) -> Mapping | None:
        """The nested mapping at `key`, or None when absent/null."""
        v = self.data.get(key)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise self.error(key, "must be a mapping", v)
        return v

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in self.data:
            if key in allowed:
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    hint = f"; did you mean {close[0]!r}?"
            raise self.error(key, f"unknown key{hint or '; expected one of ' + ', '.join(allowed)}")

    def require(self, keys: Iterable[str], what: str = "") -> None:
        for key in keys:
            if key not in self.data:
                raise self.error(key, f"missing{'; ' + what if what else ''}")


# --------------------------------------------------------------------------- reading the file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key!r}", key_node.start_mark,
                        )
                    seen.add(key)
                except TypeError:  # unhashable: the base class reports it with its mark
                    break
        return super().construct_mapping(node, deep=deep)


def _read(path: Path, file: str) -> Any:
    """Parse the file as JSON (`.json`) or YAML; any failure is a ConfigError."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{size} bytes is too large for a config file", file=file)
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", file=file) from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise ConfigError(f"cannot read config: {e}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", file=file) from None

    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON: {e.msg}", file=f"{file}:{e.lineno}:{e.colno}") from None
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"invalid JSON: {type(e).__name__}: {e}", file=file) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        problem = e.problem or e.context or "syntax error"
        raise ConfigError(f"invalid YAML: {problem}", file=where) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # PyYAML lets some constructor failures through unwrapped, e.g. `!!timestamp 2024-13-45`
        # or a 5000-digit integer (ValueError), or very deep nesting (RecursionError).
        raise ConfigError(f"invalid YAML value: {type(e).__name__}: {e}", file=file) from None


def _is_hf_config(data: Mapping, path: Path) -> bool:
    """An HF config.json rather than our format: it says what model it is at the top level, or
    is a `.json` file. A top-level `model:` mapping always means our format (so a stray
    top-level key in our format is reported as unknown rather than read as HF)."""
    if isinstance(data.get("model"), Mapping):
        return False
    return "model_type" in data or "architectures" in data or path.suffix.lower() == ".json"


# --------------------------------------------------------------------------- the model part


@dataclass(frozen=True)
class _Family:
    attention_bias: bool | None  # None: read the config's attention_bias field
    kv_heads_default: int | None  # None: num_attention_heads (MHA)
    max_position_embeddings: int


# The defaults transformers' LlamaConfig / MistralConfig / Qwen2Config apply for absent fields.
_FAMILIES = {
    "llama": _Family(attention_bias=None, kv_heads_default=None, max_position_embeddings=2048),
    "mistral": _Family(attention_bias=False, kv_heads_default=8, max_position_embeddings=4096 * 32),
    # Qwen2 q/k/v projections always carry a bias; its config.json has no field for it.
    "qwen2": _Family(attention_bias=True, kv_heads_default=None, max_position_embeddings=32768),
}
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}

_SIZE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)
_YAML_REQUIRED = ("name", "model_type", *_SIZE_KEYS, "rms_norm_eps", "rope_theta")
_YAML_OPTIONAL = ("head_dim", "tie_word_embeddings", "attention_bias", "rope_scaling")
_ROPE_KEYS = (
    "rope_type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _model_type(f: _Fields) -> str:
    model_type = f.str("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise f.error("model_type", f"unsupported model_type; expected one of {', '.join(SUPPORTED_MODEL_TYPES)}", model_type)
    return model_type


def _rope_scaling(f: _Fields, *, strict: bool) -> RopeScaling | None:
    """RoPE scaling from a mapping in HF's layout. Old configs name the kind `type`, newer ones
    `rope_type`; "default" means no scaling."""
    if strict:
        f.reject_unknown((*_ROPE_KEYS, "type"))
    kinds = {k: f.data[k] for k in ("rope_type", "type") if f.has(k)}
    if len(kinds) == 2 and kinds["rope_type"] != kinds["type"]:
        raise f.error("type", f"disagrees with rope_type ({kinds['rope_type']!r})", kinds["type"])
    if not kinds:
        if strict:
            raise f.error("rope_type", f"missing; expected one of {', '.join(SUPPORTED_ROPE_TYPES)}")
        return None  # HF: a rope dict without a kind is the default RoPE
    key = "rope_type" if "rope_type" in kinds else "type"
    kind = f.str(key)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise f.error(key, f"unsupported rope type; expected one of {', '.join(SUPPORTED_ROPE_TYPES)}", kind)
    if kind == "default":
        return None
    if f.has("partial_rotary_factor") and f.data["partial_rotary_factor"] != 1.0:
        raise f.error("partial_rotary_factor", "unsupported; RoPE is applied to the whole head_dim", f.data["partial_rotary_factor"])
    # llama3: every parameter must be given (as transformers requires); guessing would be silent.
    factor = f.float("factor")
    if factor < 1.0:
        raise f.error("factor", "must be >= 1 for llama3 scaling", f.data["factor"])
    low = f.float("low_freq_factor")
    high = f.float("high_freq_factor")
    if high <= low:
        raise f.error("high_freq_factor", f"must be > low_freq_factor ({low:g})", f.data["high_freq_factor"])
    original = f.int("original_max_position_embeddings")
    return RopeScaling(
        rope_type="llama3",
        factor=factor,
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=original,
    )


def _shape_checks(f: _Fields, m: dict[str, Any], head_dim_explicit: bool) -> int:
    """Checks shared by both formats; returns head_dim (derived when not given)."""
    hidden, heads, kv = m["hidden_size"], m["num_attention_heads"], m["num_key_value_heads"]
    if head_dim_explicit:
        # Published configs may have head_dim * heads != hidden_size (the q/o projections are then
        # not square); that is fine as long as head_dim is stated.
        head_dim = f.int("head_dim")
    else:
        if hidden % heads:
            raise f.error("num_attention_heads", f"must divide hidden_size ({hidden}) when head_dim is not given", heads)
        head_dim = hidden // heads
    if heads % kv:
        raise f.error("num_key_value_heads", f"must divide num_attention_heads ({heads})", kv)
    if head_dim % VECTOR_ELEMS:
        what = "head_dim" if head_dim_explicit else "head_dim (hidden_size / num_attention_heads)"
        raise ConfigError(
            f"must be even and a multiple of {VECTOR_ELEMS} (RoPE pairs, 16-byte vector loads)",
            file=f.file, field=f.field("head_dim") if head_dim_explicit else what, value=head_dim,
        )
    for key in ("hidden_size", "intermediate_size"):
        if m[key] % VECTOR_ELEMS:
            raise f.error(key, f"must be a multiple of {VECTOR_ELEMS} (16-byte vector loads of bf16)", m[key])
    return head_dim


def _model_from_yaml(f: _Fields) -> ModelConfig:
    f.reject_unknown((*_YAML_REQUIRED, *_YAML_OPTIONAL))
    f.require(_YAML_REQUIRED)
    name = f.str("name")
    if not _SAFE_NAME.match(name):
        raise f.error("name", "must be a file-name-safe string (letters, digits, . _ + -), it names the output folder", name)
    model_type = _model_type(f)
    m: dict[str, Any] = {key: f.int(key) for key in _SIZE_KEYS}
    head_dim = _shape_checks(f, m, head_dim_explicit="head_dim" in f.data)
    rope = f.mapping("rope_scaling")
    return ModelConfig(
        name=name,
        model_type=model_type,
        head_dim=head_dim,
        rms_norm_eps=f.float("rms_norm_eps"),
        rope_theta=f.float("rope_theta"),
        tie_word_embeddings=f.bool("tie_word_embeddings", False),
        attention_bias=f.bool("attention_bias", model_type == "qwen2"),
        rope_scaling=None if rope is None else _rope_scaling(
            _Fields(rope, f.file, f.field("rope_scaling") + "."), strict=True),
        **m,
    )


def _hf_name(data: Mapping, path: Path) -> str:
    """A name for an HF config: its folder for a `config.json` (resolving the HF hub cache's
    `models--org--name/snapshots/<hash>/` layout), else `_name_or_path`, else the file stem."""
    candidates = []
    if path.name == "config.json":
        folder = path.resolve().parent
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            candidates.append(folder.parent.parent.name.split("--")[-1])
        candidates.append(folder.name)
    name_or_path = data.get("_name_or_path")
    if isinstance(name_or_path, str):
        candidates.append(name_or_path.rstrip("/").rsplit("/", 1)[-1])
    candidates += [path.stem, str(data.get("model_type"))]
    for c in candidates:
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", c).strip("-.")
        if safe:
            return safe
    return "model"


def _model_from_hf(data: Mapping, file: str, path: Path) -> tuple[ModelConfig, int | None]:
    """Returns the model and the sliding window its attention would use (None: full)."""
    f = _Fields(data, file, null_is_missing=True)
    if not f.has("model_type") and isinstance(data.get("architectures"), list):
        known = [_ARCHITECTURES[a] for a in data["architectures"] if isinstance(a, str) and a in _ARCHITECTURES]
        if known:
            data = {**data, "model_type": known[0]}
            f = _Fields(data, file, null_is_missing=True)
    model_type = _model_type(f)
    family = _FAMILIES[model_type]

    # What would change the network in ways the generated kernel does not implement.
    act = f.str("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise f.error("hidden_act", "unsupported activation; expected silu (SwiGLU MLP)", act)
    if f.bool("mlp_bias", False):
        raise f.error("mlp_bias", "unsupported; the MLP projections must have no bias", True)
    if f.has("quantization_config"):
        raise f.error("quantization_config", "quantized checkpoints are not supported; expected bf16/fp16 weights")
    if model_type == "llama":
        if f.bool("attention_bias", False):
            # In HF Llama this also puts a bias on o_proj, which ModelConfig cannot express.
            raise f.error("attention_bias", "unsupported for llama (it also biases o_proj)", True)
        attention_bias = False
    else:
        attention_bias = bool(family.attention_bias)

    m: dict[str, Any] = {}
    for key in _SIZE_KEYS:
        if key == "num_key_value_heads":
            m[key] = f.int(key, family.kv_heads_default or m["num_attention_heads"])
        elif key == "max_position_embeddings":
            m[key] = f.int(key, family.max_position_embeddings)
        else:
            m[key] = f.int(key)
    head_dim = _shape_checks(f, m, head_dim_explicit=f.has("head_dim"))

    # RoPE: transformers 5 writes `rope_parameters` (with rope_theta inside), older versions
    # `rope_theta` plus `rope_scaling`.
    theta_f = f
    rope_src = "rope_parameters" if f.has("rope_parameters") else "rope_scaling"
    rope = f.mapping(rope_src)
    if rope is not None:
        if any(isinstance(v, Mapping) for v in rope.values()):
            raise f.error(rope_src, "per-layer-type RoPE parameters are not supported")
        rf = _Fields(rope, file, f"{rope_src}.", null_is_missing=True)
        if rf.has("rope_theta"):
            theta_f = rf
        rope_scaling = _rope_scaling(rf, strict=False)
    else:
        rope_scaling = None
    rope_theta = theta_f.float("rope_theta", 10000.0)

    # Sliding window: Mistral uses it whenever set; Qwen2 only with use_sliding_window (or when
    # transformers 5's layer_types lists sliding layers).
    layer_types = data.get("layer_types")
    sliding_layers = isinstance(layer_types, list) and "sliding_attention" in layer_types
    if model_type == "mistral" or sliding_layers or (model_type == "qwen2" and f.bool("use_sliding_window", False)):
        window = f.int("sliding_window", None)
    else:
        window = None

    model = ModelConfig(
        name=_hf_name(data, path),
        model_type=model_type,
        head_dim=head_dim,
        rms_norm_eps=f.float("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        tie_word_embeddings=f.bool("tie_word_embeddings", False),
        attention_bias=attention_bias,
        rope_scaling=rope_scaling,
        **m,
    )
    return model, window


# --------------------------------------------------------------------------- the deploy part


def _deploy(
    model: ModelConfig,
    section: _Fields | None,
    *,
    gpu: str | None,
    batch: int | None,
    max_context: int | None,
    dtype: str | None,
) -> DeployConfig:
    """Each value from its flag if given, else the file's deploy section, else the default.
    Flag errors name the flag (`--batch`) and no file."""
    flags = _Fields({"gpu": gpu, "batch": batch, "max-context": max_context, "dtype": dtype}, "", "--", null_is_missing=True)

    def pick(flag: str, key: str) -> tuple[_Fields, str] | None:
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
    return DeployConfig(gpu=spec, batch=n_batch, max_context=context, dtype=dt)


# --------------------------------------------------------------------------- entry point


def load_config(
    path: str | os.PathLike,
    *,
    gpu: str | None = None,
    batch: int | None = None,
    max_context: int | None = None,
    dtype: str | None = None,
) -> tuple[ModelConfig, DeployConfig]:
    """Read a model + deployment configuration.

    `path` is our YAML format or an HF `config.json`. The keyword arguments (the CLI's flags)
    override the file's `deploy:` section; without either, the deployment is H100, batch 1,
    max_context = min(4096, max_position_embeddings), bf16.

    Raises ConfigError (and nothing else) for any bad input.
    """
    file = os.fspath(path)
    p = Path(file)
    data = _read(p, file)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level must be a mapping (with model: and deploy:, or an HF config.json), not {type(data).__name__}",
            file=file,
        )
    window: int | None = None
    deploy_section: _Fields | None = None
    if _is_hf_config(data, p):
        model, window = _model_from_hf(data, file, p)
    else:
        top = _Fields(data, file)
        top.reject_unknown(("model", "deploy"))
        top.require(("model",), "expected a mapping of ModelConfig fields")
        model_map = top.mapping("model")
        if model_map is None:
            raise top.error("model", "must be a mapping of ModelConfig fields", None)
        model = _model_from_yaml(_Fields(model_map, file, "model."))
        if "deploy" in data:
            deploy_map = top.mapping("deploy")
            if deploy_map is None:
                raise top.error("deploy", "must be a mapping (gpu, batch, max_context, dtype)", None)
            deploy_section = _Fields(deploy_map, file, "deploy.")
            deploy_section.reject_unknown(("gpu", "batch", "max_context", "dtype"))

    deploy = _deploy(model, deploy_section, gpu=gpu, batch=batch, max_context=max_context, dtype=dtype)

    # We generate full attention. With a sliding window W, a query attends to keys at distance
    # < W, so the two agree exactly while max_context <= W; beyond that they would differ.
    if window is not None and window < deploy.max_context:
        raise ConfigError(
            f"attention is generated as full attention, which equals sliding-window attention only"
            f" up to max_context {window}; got max_context {deploy.max_context} (lower --max-context)",
            file=file, field="sliding_window", value=window,
        )
    return model, deploy
