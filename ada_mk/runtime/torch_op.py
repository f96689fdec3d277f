"""The MegaKernel as a PyTorch custom operator: one decode step on PyTorch's current CUDA stream,
inputs and outputs as CUDA tensors, no host synchronisation, so a PyTorch serving stack calls it
without leaving its stream and captures it in a CUDA graph (each replay is the next step).

    lib = SharedLibrary("out/.../libadamk_....so").create(packed.data_ptr())  # packed: CUDA uint8/int16
    session = register_session(lib)
    torch.ops.adamk.decode_step(session, tokens, positions, next_tokens, next_positions, logits)
    lib.synchronize(torch.cuda.current_stream().cuda_stream)  # when the caller wants the faults

tokens, positions, next_tokens, next_positions: int32 CUDA tensors of the kernel's batch B;
logits: float32 CUDA tensor [B, V]. Torch is needed only here (ada_mk's runtime does not import it).
"""
from __future__ import annotations

import torch

from .capi import SharedLibrary

_SESSIONS: dict[int, SharedLibrary] = {}


def register_session(lib: SharedLibrary) -> int:
    """A handle for `lib`'s open session, to pass to torch.ops.adamk.decode_step."""
    if not lib.is_open:
        raise RuntimeError("register_session: the library has no open session (call create() first)")
    handle = len(_SESSIONS) + 1
    while handle in _SESSIONS:
        handle += 1
    _SESSIONS[handle] = lib
    return handle


def unregister_session(handle: int) -> None:
    _SESSIONS.pop(handle, None)


def _check_vector(t: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> None:
    if t.device.type != "cuda" or t.device != device:
        raise ValueError(f"adamk.decode_step: {name} is on {t.device}; expected {device}, like tokens")
    if t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous():
        raise ValueError(f"adamk.decode_step: {name} is {t.dtype} {tuple(t.shape)}"
                         f"{'' if t.is_contiguous() else ' (not contiguous)'}; expected contiguous {dtype} {shape}")


@torch.library.custom_op("adamk::decode_step", mutates_args=("next_tokens", "next_positions", "logits"))
def decode_step(session: int, tokens: torch.Tensor, positions: torch.Tensor, next_tokens: torch.Tensor,
                next_positions: torch.Tensor, logits: torch.Tensor) -> None:
    """One decode step of session `session` (register_session) on the current CUDA stream."""
    lib = _SESSIONS.get(session)
    if lib is None:
        raise ValueError(f"adamk.decode_step: no session {session}; register_session() gives the handle")
    b, v = lib.batch, lib.vocab_size
    dev = tokens.device
    for t, name, dtype, shape in ((tokens, "tokens", torch.int32, (b,)), (positions, "positions", torch.int32, (b,)),
                                  (next_tokens, "next_tokens", torch.int32, (b,)),
                                  (next_positions, "next_positions", torch.int32, (b,)),
                                  (logits, "logits", torch.float32, (b, v))):
        _check_vector(t, name, dtype, shape, dev if dev.type == "cuda" else torch.device("cuda"))
    stream = torch.cuda.current_stream(dev).cuda_stream
    lib.decode_async(stream, tokens.data_ptr(), positions.data_ptr(), next_tokens.data_ptr(),
                     next_positions.data_ptr(), logits.data_ptr())


@decode_step.register_fake
def _decode_step_fake(session: int, tokens: torch.Tensor, positions: torch.Tensor, next_tokens: torch.Tensor,
                      next_positions: torch.Tensor, logits: torch.Tensor) -> None:
    return None
