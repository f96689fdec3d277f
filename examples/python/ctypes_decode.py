"""Decode through a generated kernel's C ABI from Python with ctypes only (no torch, no
cuda-python): the way another runtime embeds the `.so`. Every step runs on our own CUDA stream
through adamk_decode_async, reading the tokens and positions the step before it wrote; the host
waits once, at the end (adamk_synchronize). Device memory and the stream come from the CUDA driver
(libcuda.so.1, present wherever a GPU is), also through ctypes.

    # a checkpoint and a prompt (packs the weights for the library's layout, tokenizes, detokenizes)
    python examples/python/ctypes_decode.py --library lib<kernel>.so --weights SmolLM2.gguf \
        --prompt "The capital of France is" -n 16
    # or already packed weights and raw token ids
    python examples/python/ctypes_decode.py --library lib<kernel>.so --packed weights.bin --ids 504 3575 -n 16

Build the library with `adamk-gen --config ...` (or ada_mk.codegen.build.build(..., library=True));
pack weights with `adamk-pack` (`python -m ada_mk.cli.pack` from a checkout).
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time

import numpy as np

from ada_mk.runtime.capi import SharedLibrary


class Driver:
    """The few CUDA driver calls the example needs, in the device's primary context (the one the
    library's runtime uses)."""

    def __init__(self, device: int) -> None:
        self.cu = ctypes.CDLL("libcuda.so.1")
        dev, self.ctx = ctypes.c_int(), ctypes.c_void_p()
        self.check(self.cu.cuInit(0), "cuInit")
        self.check(self.cu.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        self.check(self.cu.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), dev), "cuDevicePrimaryCtxRetain")
        self.check(self.cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def check(self, rc: int, call: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{call} failed: CUDA driver error {rc}")

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self.check(self.cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cuMemAlloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check(self.cu.cuMemFree_v2(ctypes.c_uint64(ptr)), "cuMemFree")

    def to_device(self, dst: int, a: np.ndarray) -> None:
        """A copy that is done when it returns (a pageable copy may still be in flight when
        cuMemcpyHtoD returns: wait for it, since the steps run on another stream)."""
        self.check(self.cu.cuMemcpyHtoD_v2(ctypes.c_uint64(dst), a.ctypes.data_as(ctypes.c_void_p),
                                           ctypes.c_size_t(a.nbytes)), "cuMemcpyHtoD")
        self.check(self.cu.cuCtxSynchronize(), "cuCtxSynchronize")

    def to_host(self, a: np.ndarray, src: int) -> None:
        self.check(self.cu.cuMemcpyDtoH_v2(a.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(src),
                                           ctypes.c_size_t(a.nbytes)), "cuMemcpyDtoH")

    def copy_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Device to device, queued on `stream`."""
        self.check(self.cu.cuMemcpyDtoDAsync_v2(ctypes.c_uint64(dst), ctypes.c_uint64(src), ctypes.c_size_t(nbytes),
                                                ctypes.c_void_p(stream)), "cuMemcpyDtoDAsync")

    def stream(self) -> int:
        st = ctypes.c_void_p()
        self.check(self.cu.cuStreamCreate(ctypes.byref(st), 1), "cuStreamCreate")  # non-blocking
        return st.value

    def destroy_stream(self, stream: int) -> None:
        self.check(self.cu.cuStreamDestroy_v2(ctypes.c_void_p(stream)), "cuStreamDestroy")


def decode(lib: SharedLibrary, cuda: Driver, prompt: list[int], n: int) -> list[int]:
    """Queue the whole decode on one stream and wait once: the prompt goes in step by step (copied
    over the token the step before chose), then each step feeds on the one before and its next
    tokens are kept on the device. Sequence 0's n next tokens."""
    B, T = lib.batch, len(prompt)
    # One device buffer: io[2][tokens, positions][B] (step t reads slot t % 2, writes the other),
    # the prompt [T][B], the next tokens [n][B]; all int32.
    mem = cuda.alloc(4 * B * (4 + T + n))
    slot = [(mem + 8 * B * s, mem + 8 * B * s + 4 * B) for s in (0, 1)]
    ids, outs = mem + 16 * B, mem + 4 * B * (4 + T)
    stream = cuda.stream()
    try:
        cuda.to_device(mem, np.concatenate([np.zeros(4 * B, np.int32), np.repeat(np.asarray(prompt, np.int32), B)]))
        for t in range(T + n - 1):
            (tok, pos), (nxt, npos) = slot[t % 2], slot[(t + 1) % 2]
            if t < T:
                cuda.copy_async(tok, ids + 4 * B * t, 4 * B, stream)
            lib.decode_async(stream, tok, pos, nxt, npos)
            if t >= T - 1:
                cuda.copy_async(outs + 4 * B * (t - T + 1), nxt, 4 * B, stream)
        lib.synchronize(stream)  # the one wait; it raises what the steps found
        out = np.empty((n, B), np.int32)
        cuda.to_host(out, outs)
        return out[:, 0].tolist()
    finally:
        cuda.destroy_stream(stream)
        cuda.free(mem)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", required=True, help="lib<kernel>.so")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--packed", help="packed bf16 weights for this kernel (adamk-pack)")
    src.add_argument("--weights", help="a checkpoint (GGUF file or HF folder), packed here")
    prompt = ap.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text (needs --weights, for its tokenizer)")
    prompt.add_argument("--ids", type=int, nargs="+", help="prompt token ids")
    ap.add_argument("-n", type=int, default=16, help="tokens to generate")
    ap.add_argument("--device", type=int, default=0)
    a = ap.parse_args(argv)

    lib = SharedLibrary(a.library)
    print(f"{lib.version}: batch {lib.batch}, vocab {lib.vocab_size}, max context {lib.max_context}", file=sys.stderr)
    tok = None
    if a.packed:
        packed = np.fromfile(a.packed, dtype="<u2")
    else:
        from ada_mk.checkpoints import load_checkpoint
        from ada_mk.checkpoints.pack import weights_layout_from_json
        from ada_mk.runtime.weights import pack_weights

        ck = load_checkpoint(a.weights)
        packed = pack_weights(weights_layout_from_json(lib.plan_json()), ck.weights)
        tok = ck.tokenizer() if a.prompt else None
    if a.prompt and tok is None:
        ap.error("--prompt needs --weights (the tokenizer comes from the checkpoint)")
    ids = tok.encode(a.prompt) if tok else list(a.ids)
    if len(ids) + a.n > lib.max_context:
        ap.error(f"prompt + n exceed the library's max context {lib.max_context}")

    try:
        with lib.create(packed, device=a.device):
            cuda = Driver(a.device)
            t0 = time.perf_counter()
            out = decode(lib, cuda, ids, a.n)
            took = time.perf_counter() - t0
    except (RuntimeError, OSError) as e:  # the library's or the driver's message, one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(" ".join(map(str, out)))
    if tok is not None:
        print(tok.decode(out))
    print(f"{len(ids) + a.n - 1} steps in {took * 1e3:.1f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
