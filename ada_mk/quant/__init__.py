"""8-bit quantized weights: the QuantizedMatrix form (8-bit values, float32 scales per output row
and group of input columns), the FP8 E4M3 codec, round-to-nearest quantizers, and the readers of
the on-disk 8-bit layouts (FP8 safetensors checkpoints, GGUF Q8_0).

    from ada_mk.quant import quantize_fp8, quantize_int8
    m = quantize_int8(w, group=32)       # QuantizedMatrix; m.dequantize() -> float32 [N, K]

Checkpoints stored in 8 bits load through ada_mk.checkpoints.load_checkpoint: `ck.weights` gives
every tensor dequantized to float32 (what the bf16 kernel packs today), and `ck.quantized` gives
the 8-bit linear weights as QuantizedMatrix, as stored.

The torch twins (QuantizedTensor, quantize_fp8_torch, quantize_int8_torch; torch is imported only
when they are called) quantize on the GPU bit for bit as the numpy quantizers do.

4-bit weights have their own host form, Int4Matrix (codes 0..15 one per byte, float32 scales and
offsets per row and group: W = q * scale + offset, or (q - 8) * scale when symmetric), read from
GGUF Q4_0 / Q4_1 / Q4_K blocks (gguf_int4_matrix; `ck.int4` of a GGUF checkpoint), AWQ and GPTQ
tensors (int4_scheme, awq_matrix, gptq_matrix), or made by quantize_int4 / quantize_int4_torch.
"""
from .awq_gptq import AWQ_ORDER, Int4Scheme, awq_matrix, gptq_matrix, int4_matrix, int4_scheme, unpack_nibbles
from .e4m3 import E4M3_MAX, decode_e4m3, encode_e4m3
from .errors import QuantFormatError
from .formats import FP8Scheme, fp8_matrix, fp8_scheme
from .gguf_q4 import INT4_TYPES, gguf_int4_matrix, q4_0_matrix, q4_1_matrix, q4_bytes, q4_k_matrix, q4_k_scale_min
from .gguf_q8 import q8_0_bytes, q8_0_matrix
from .int4 import Int4Matrix
from .int4_quantize import quantize_int4
from .int4_torch import Int4Tensor, quantize_int4_torch
from .lazy import QuantizedTensors
from .matrix import QuantizedMatrix
from .quantize import quantize_fp8, quantize_int8
from .torch_quant import QuantizedTensor, encode_e4m3_torch, quantize_fp8_torch, quantize_int8_torch

__all__ = ["E4M3_MAX", "FP8Scheme", "QuantFormatError", "QuantizedMatrix", "QuantizedTensors", "decode_e4m3",
           "encode_e4m3", "fp8_matrix", "fp8_scheme", "q8_0_bytes", "q8_0_matrix", "quantize_fp8", "quantize_int8",
           "QuantizedTensor", "encode_e4m3_torch", "quantize_fp8_torch", "quantize_int8_torch",
           "Int4Matrix", "Int4Tensor", "quantize_int4", "quantize_int4_torch",
           "INT4_TYPES", "gguf_int4_matrix", "q4_0_matrix", "q4_1_matrix", "q4_bytes", "q4_k_matrix", "q4_k_scale_min",
           "AWQ_ORDER", "Int4Scheme", "awq_matrix", "gptq_matrix", "int4_matrix", "int4_scheme", "unpack_nibbles"]
