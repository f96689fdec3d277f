"""The one exception type for a bad checkpoint."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: a missing, extra or mis-shaped tensor, an unsupported
    dtype or quantization, a malformed file. The message is one line and names the tensor or file."""
