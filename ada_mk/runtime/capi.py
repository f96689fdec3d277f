"""ctypes binding of a generated kernel's C ABI (lib<name>.so, declared in <name>.h).

Torch-free: weights come in as a NumPy uint16 array of bf16 bits (ada_mk.runtime.weights.pack_weights)
or as a device pointer (an int, e.g. torch's `tensor.data_ptr()`), tokens and logits as NumPy arrays.

    lib = SharedLibrary(artifacts.library)
    lib.create(pack_weights(plan, weights))
    next_tokens, logits = lib.decode(tokens, positions, want_logits=True)
    lib.close()
"""
from __future__ import annotations

import ctypes
import json
import os
from typing import Any

import numpy as np

# Return codes (adamk_status in the header).
ADAMK_OK = 0
ADAMK_ERR_CUDA = 1
ADAMK_ERR_ARGUMENT = 2
ADAMK_ERR_DEVICE = 3
ADAMK_ERR_TIMEOUT = 4
ADAMK_ERR_MEMORY = 5
ADAMK_ERR_WEIGHTS = 6


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the C signatures, so ctypes converts (and checks) arguments."""
    c_int, c_size_t, c_void_p, c_char_p = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p
    i32p, f32p = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "adamk_version": (c_char_p, []),
        "adamk_plan_json": (c_char_p, []),
        "adamk_last_error": (c_char_p, []),
        "adamk_batch": (c_int, []),
        "adamk_vocab_size": (c_int, []),
        "adamk_max_context": (c_int, []),
        "adamk_weights_bytes": (c_size_t, []),
        "adamk_create": (c_int, [c_void_p, c_size_t, c_int, c_int, ctypes.POINTER(c_void_p)]),
        "adamk_decode": (c_int, [c_void_p, i32p, i32p, i32p, f32p]),
        "adamk_decode_async": (c_int, [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p]),
        "adamk_synchronize": (c_int, [c_void_p, c_void_p]),
        "adamk_kv_cache": (c_int, [c_void_p, ctypes.POINTER(c_void_p), ctypes.POINTER(c_void_p)]),
        "adamk_check_weights": (c_int, [c_void_p]),
        "adamk_set_wait_limit": (c_int, [c_void_p, ctypes.c_double]),
        "adamk_reset": (c_int, [c_void_p]),
        "adamk_destroy": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


class SharedLibrary:
    """One generated kernel's shared library, and at most one session (loaded model) on it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.lib = ctypes.CDLL(self.path)
        _bind(self.lib)
        self.batch: int = self.lib.adamk_batch()
        self.vocab_size: int = self.lib.adamk_vocab_size()
        self.max_context: int = self.lib.adamk_max_context()
        self.weights_bytes: int = self.lib.adamk_weights_bytes()
        self._session = ctypes.c_void_p()

    # ---- what the library describes --------------------------------------------------------
    @property
    def version(self) -> str:
        return self.lib.adamk_version().decode()

    def plan_json(self) -> dict:
        """{"plan": Plan.to_json(), "layout": Layout.to_json()} of the compiled kernel."""
        return json.loads(self.lib.adamk_plan_json())

    def last_error(self) -> str:
        return self.lib.adamk_last_error().decode(errors="replace")

    def _check(self, rc: int) -> None:
        if rc != ADAMK_OK:
            raise RuntimeError(self.last_error())

    # ---- the session -----------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return bool(self._session.value)

    def create(self, weights: np.ndarray | int, device: int = 0, borrow: bool = False,
               check_weights: bool = False) -> SharedLibrary:
        """Load the packed weights (uint16 bf16 bits on the host, or an int device pointer to
        weights_bytes bytes) onto CUDA device `device`. `borrow`: use the device buffer in place
        (weights_on_device = 2) instead of copying it; it must outlive the session.
        `check_weights`: then scan them for NaN and Inf (check_weights()); on finding one, close the
        session and raise."""
        if self.is_open:
            raise RuntimeError("a session is already open on this library: close() it first")
        if isinstance(weights, (int, np.integer)) and not isinstance(weights, bool):
            ptr, nbytes, on_device = ctypes.c_void_p(int(weights)), self.weights_bytes, 2 if borrow else 1
            keep = None
        else:
            keep = np.ascontiguousarray(weights)
            if keep.dtype != np.uint16:
                raise TypeError(f"weights: expected uint16 (bf16 bits), got {keep.dtype}")
            ptr, nbytes, on_device = ctypes.c_void_p(keep.ctypes.data), keep.nbytes, 0
        session = ctypes.c_void_p()
        rc = self.lib.adamk_create(ptr, nbytes, int(device), on_device, ctypes.byref(session))
        del keep  # adamk_create copied it
        self._check(rc)
        self._session = session
        if check_weights:
            try:
                self.check_weights()
            except RuntimeError:
                self.close()
                raise
        return self

    def check_weights(self) -> None:
        """Scan the session's weights for NaN and Inf on the GPU (adamk_check_weights); raise
        RuntimeError naming the segment, layer, HF tensors and byte of the first one."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        self._check(self.lib.adamk_check_weights(self._session))

    def decode(self, tokens: Any, positions: Any, want_logits: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """One step for the whole batch: token b at position b. Returns the greedy next tokens
        (int32 [B]) and, when asked, the logits (float32 [B, V])."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        tok = self._vector(tokens, "tokens")
        pos = self._vector(positions, "positions")
        nxt = np.empty(self.batch, np.int32)
        logits = np.empty((self.batch, self.vocab_size), np.float32) if want_logits else None
        i32p, f32p = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)
        self._check(self.lib.adamk_decode(
            self._session, tok.ctypes.data_as(i32p), pos.ctypes.data_as(i32p), nxt.ctypes.data_as(i32p),
            logits.ctypes.data_as(f32p) if logits is not None else None))
        return nxt, logits

    def decode_async(self, stream: int, tokens: int, positions: int, next_tokens: int,
                     next_positions: int = 0, logits: int = 0) -> None:
        """One step on CUDA stream `stream` (a cudaStream_t as an int, 0: the legacy default),
        every array a device pointer (int): tokens, positions and next_tokens of B int32,
        next_positions (B int32) and logits (B x V float32) optional (0). No synchronisation;
        faults are reported by synchronize()."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        self._check(self.lib.adamk_decode_async(self._session, stream or None, tokens or None, positions or None,
                                                next_tokens or None, next_positions or None, logits or None))

    def synchronize(self, stream: int = 0) -> None:
        """Wait for `stream`; raise what its asynchronous steps found (refused inputs, a timeout)."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        self._check(self.lib.adamk_synchronize(self._session, stream or None))

    def kv_cache(self) -> tuple[int, int]:
        """Device pointers of the K and V caches, bf16 [layer][sequence][K/V head][position][head_dim]."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        k, v = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.lib.adamk_kv_cache(self._session, ctypes.byref(k), ctypes.byref(v)))
        return int(k.value), int(v.value)

    def set_wait_limit(self, milliseconds: float) -> None:
        """Bound every dependency wait of later steps (adamk_set_wait_limit; default 500 ms)."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        self._check(self.lib.adamk_set_wait_limit(self._session, milliseconds))

    def reset(self) -> None:
        """Forget every sequence; positions restart at 0. Also the way back after a timeout."""
        if not self.is_open:
            raise RuntimeError("no session: call create() first")
        self._check(self.lib.adamk_reset(self._session))

    def close(self) -> None:
        """Free the session's device memory (the library stays loaded). Idempotent."""
        if self.is_open:
            self.lib.adamk_destroy(self._session)
            self._session = ctypes.c_void_p()

    def _vector(self, x: Any, what: str) -> np.ndarray:
        a = np.asarray(x)
        if a.size != self.batch:
            raise ValueError(f"{what}: expected {self.batch} values (the batch), got shape {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{what}: expected integers, got {a.dtype}")
        if a.size and (a.min() < -2**31 or a.max() >= 2**31):
            raise ValueError(f"{what}: {a.reshape(-1).tolist()} do not fit int32")
        return np.ascontiguousarray(a.reshape(self.batch), dtype=np.int32)

    def __enter__(self) -> SharedLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass
