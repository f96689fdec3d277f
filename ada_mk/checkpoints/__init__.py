"""Real checkpoints: HF safetensors folders and GGUF files -> (ModelConfig, HF-named weights),
and their tokenizers."""
from .errors import CheckpointError
from .gguf_file import GGUFTokenizerInfo, load_gguf
from .int4_safetensors import load_int4_safetensors, read_int4_scheme
from .load import Checkpoint, load_checkpoint
from .names import check_weights, expected_weights
from .safetensors_dir import load_safetensors_dir

__all__ = ["Checkpoint", "CheckpointError", "GGUFTokenizerInfo", "check_weights", "expected_weights",
           "load_checkpoint", "load_gguf", "load_int4_safetensors", "load_safetensors_dir", "read_int4_scheme"]
