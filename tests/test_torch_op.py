"""The PyTorch custom operator's registration and argument checks (CPU: no session runs here;
tests/gpu/test_async_api_gpu.py runs it in a CUDA graph)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ada_mk.runtime import torch_op  # noqa: E402


class _OpenLibrary:
    """Stands in for a SharedLibrary with an open session: the checks run before any call into it."""
    is_open, batch, vocab_size = True, 2, 50

    def decode_async(self, *args):
        raise AssertionError("the checks must refuse these arguments before the library is called")


def test_registered_as_a_torch_op() -> None:
    assert hasattr(torch.ops.adamk, "decode_step")


def test_unknown_session_is_refused() -> None:
    t = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="no session 987654"):
        torch.ops.adamk.decode_step(987654, t, t, t, t, torch.zeros(2, 50))


def test_cpu_tensors_are_refused_before_the_call() -> None:
    handle = torch_op.register_session(_OpenLibrary())
    try:
        t = torch.zeros(2, dtype=torch.int32)
        with pytest.raises(ValueError, match="tokens is on cpu; expected cuda"):
            torch.ops.adamk.decode_step(handle, t, t, t, t, torch.zeros(2, 50))
    finally:
        torch_op.unregister_session(handle)


def test_closed_library_cannot_register() -> None:
    lib = _OpenLibrary()
    lib.is_open = False
    with pytest.raises(RuntimeError, match="no open session"):
        torch_op.register_session(lib)
