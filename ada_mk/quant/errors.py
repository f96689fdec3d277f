"""The exception for a quantized format or layout that ada_mk does not read."""
from __future__ import annotations


class QuantFormatError(ValueError):
    """An unsupported quantization method or format, or a scale tensor that does not fit its
    weight. The message is one line and names the tensor or config field; the checkpoint and config
    loaders re-raise it as their own error type with the file prefixed."""
