"""Run a generated MegaKernel through cuda-python (`cuda.bindings.driver`).

    engine = MegaKernelEngine(plan, artifacts.fatbin)
    engine.load_weights(weights)              # dict of numpy arrays or torch tensors (HF names)
    next_tokens, logits = engine.step(tokens, positions, want_logits=True)
    tokens = engine.generate(prompt_ids, n)  # greedy

One decode step is exactly one launch of the cooperative kernel (cuLaunchCooperativeKernel),
which fails instead of deadlocking when the grid cannot be co-resident.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..search.device_memory import device_bytes
from ..search.layout import make_layout
from ..search.plan import Plan
from .weights import pack_weights
from .weights_check import check_packed, check_tensors


class KernelError(RuntimeError):
    """A CUDA call failed, an input was refused, or a dependency wait ran past the wait limit."""


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:  # pragma: no cover
        raise KernelError("cuda-python is not installed: pip install cuda-python") from e
    return driver


def _check(result):
    """cuda-python returns (err, *values): raise on error, return the values."""
    drv = _driver()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        _, name = drv.cuGetErrorName(err)
        _, text = drv.cuGetErrorString(err)
        raise KernelError(f"CUDA error {name.decode() if name else err}: {text.decode() if text else ''}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


class _Args(ctypes.Structure):
    """Mirror of adamk::Args (adamk/tasks.cuh)."""

    _fields_ = [(n, ctypes.c_void_p) for n in (
        "weights", "scratch", "counters", "k_cache", "v_cache", "tokens", "positions",
        "next_tokens", "next_positions", "steps", "timeout", "bad_input", "profile")]


class _WaitTimeout(ctypes.Structure):
    _fields_ = [("flag", ctypes.c_uint32), ("sm", ctypes.c_int32), ("kind", ctypes.c_int32),
                ("layer", ctypes.c_int32), ("task", ctypes.c_int32), ("counter", ctypes.c_int32),
                ("value", ctypes.c_uint32), ("target", ctypes.c_uint32), ("limit_ns", ctypes.c_uint64)]


DEFAULT_WAIT_LIMIT_MS = 500.0  # the C API's default (host_api.cu.j2, kDefaultWaitLimitMs)


class _BadInput(ctypes.Structure):
    _fields_ = [("flag", ctypes.c_int32), ("sequence", ctypes.c_int32), ("token", ctypes.c_int32),
                ("position", ctypes.c_int32)]


KIND_NAMES = ["qkv", "attn", "o", "gate_up", "down", "lm_head", "argmax"]


class MegaKernelEngine:
    def __init__(self, plan: Plan, fatbin: str | Path, *, device: int = 0, profile: bool = False,
                 l2_scratch: bool = True, wait_limit_ms: float = DEFAULT_WAIT_LIMIT_MS,
                 check_weights: bool = False) -> None:
        """`profile` must match how the fatbin was built (task timing).
        `l2_scratch`: keep the activations in L2 while the weights stream past (set_l2_scratch).
        `wait_limit_ms`: how long one dependency wait may last before the step gives up and
        raises KernelError (set_wait_limit).
        `check_weights`: every load_* scans the weights for NaN and Inf first and raises
        ValueError naming the first (runtime.weights_check), loading nothing."""
        drv = _driver()
        self.check_weights = check_weights
        self.plan, self.layout = plan, make_layout(plan)
        self.max_tasks = max(sum(r.count for r in runs) for runs in plan.schedule)
        self.batch, self.vocab = plan.batch, plan.model.vocab_size
        _check(drv.cuInit(0))
        self.device = _check(drv.cuDeviceGet(device))
        self.context = _check(drv.cuDevicePrimaryCtxRetain(self.device))  # shared with torch
        _check(drv.cuCtxSetCurrent(self.context))
        self._check_device()
        self.module = _check(drv.cuModuleLoadData(Path(fatbin).read_bytes()))
        self.kernel = _check(drv.cuModuleGetFunction(self.module, plan.kernel_name.encode()))
        smem = plan.smem_bytes
        _check(drv.cuFuncSetAttribute(
            self.kernel, drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem))
        per_sm = _check(drv.cuOccupancyMaxActiveBlocksPerMultiprocessor(self.kernel, plan.threads, smem))
        if per_sm < 1:
            raise KernelError(f"{plan.kernel_name}: a block ({plan.threads} threads, {smem} B shared memory) "
                              "cannot be resident on an SM of this device")

        L = self.layout
        self.buffers: dict[str, int] = {}
        self._alloc("weights", L.weights.total_bytes)
        self._alloc("scratch", L.scratch.total_bytes, fill=0xFFFFFFFF)  # NaN poison: unwritten reads show
        self._alloc("counters", L.counters.total_bytes, fill=0)
        kv_bytes = L.kv_elems_per_layer * plan.model.num_hidden_layers * 2
        self._alloc("k_cache", kv_bytes, fill=0)
        self._alloc("v_cache", kv_bytes, fill=0)
        for name in ("tokens0", "positions0", "tokens1", "positions1"):
            self._alloc(name, 4 * self.batch, fill=0)
        self._alloc("timeout", ctypes.sizeof(_WaitTimeout), fill=0)
        self._alloc("bad_input", ctypes.sizeof(_BadInput), fill=0)
        self._alloc("steps", 4 * plan.sms, fill=0)  # each block's steps: the kernel's epoch (adamk/megakernel.cuh)
        if profile:
            self._alloc("profile", plan.sms * self.max_tasks * 4 * 8, fill=0)
        self.launched = 0
        self.stream = _check(drv.cuStreamCreate(0))
        self.set_l2_scratch(l2_scratch)
        self.set_wait_limit(wait_limit_ms)

    def set_wait_limit(self, milliseconds: float) -> None:
        """Bound every dependency wait of later steps to `milliseconds` (as adamk_set_wait_limit):
        a step whose producer never comes stops and raises KernelError instead of hanging. Raise
        it under compute-sanitizer or a profiler, which slow a step by orders of magnitude."""
        if not 0.001 <= milliseconds <= 3.6e6:
            raise KernelError(f"wait limit {milliseconds} ms; expected 0.001 to 3600000 ms")
        drv = _driver()
        self.wait_limit_ns = int(milliseconds * 1e6)
        _check(drv.cuStreamSynchronize(self.stream))  # no step in flight reads the old limit
        limit = ctypes.c_uint64(self.wait_limit_ns)
        _check(drv.cuMemcpyHtoD(self.buffers["timeout"] + _WaitTimeout.limit_ns.offset, ctypes.addressof(limit), 8))

    def set_l2_scratch(self, on: bool) -> None:
        """Mark the scratch buffer (the activations every stage writes and the next one reads)
        as persisting in L2 for this engine's launches. A step streams the whole model through
        L2 (15 GB for Llama-3-8B, the L2 turning over every ~10 us), which would otherwise push
        out what the producers wrote before their consumers read it, and the consumers' reads sit
        on the critical path. A no-op on devices without persisting L2."""
        drv = _driver()
        attr = drv.CUdevice_attribute
        persist = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE, self.device))
        window = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE, self.device))
        if persist <= 0 or window <= 0:
            return
        nbytes = min(self.layout.scratch.total_bytes, window) if on else 0
        if on:
            _check(drv.cuCtxSetLimit(drv.CUlimit.CU_LIMIT_PERSISTING_L2_CACHE_SIZE, min(persist, nbytes)))
        value = drv.CUstreamAttrValue()
        w = value.accessPolicyWindow
        w.base_ptr = self.buffers["scratch"]
        w.num_bytes = nbytes
        w.hitRatio = min(1.0, persist / nbytes) if nbytes else 0.0
        w.hitProp = drv.CUaccessProperty.CU_ACCESS_PROPERTY_PERSISTING if on else drv.CUaccessProperty.CU_ACCESS_PROPERTY_NORMAL
        w.missProp = drv.CUaccessProperty.CU_ACCESS_PROPERTY_STREAMING
        _check(drv.cuStreamSetAttribute(self.stream, drv.CUstreamAttrID.CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW, value))
        if not on:
            _check(drv.cuCtxResetPersistingL2Cache())

    # ---------------------------------------------------------------------------- set-up
    def _check_device(self) -> None:
        drv = _driver()
        attr = drv.CUdevice_attribute
        sms = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self.device))
        coop = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH, self.device))
        smem = _check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, self.device))
        p = self.plan
        if not coop:
            raise KernelError("this device does not support cooperative launches")
        if sms < p.sms:
            raise KernelError(f"the plan needs {p.sms} SMs resident at once; this device has {sms}")
        if smem < p.smem_bytes:
            raise KernelError(f"the plan needs {p.smem_bytes} B of shared memory per block; this device allows {smem}")

    def _alloc(self, name: str, nbytes: int, fill: int | None = None) -> None:
        """Allocate buffer `name`; out of memory, free what was allocated and raise KernelError
        with the plan's sizes and the device's free memory."""
        drv = _driver()
        err, ptr = drv.cuMemAlloc(max(nbytes, 16))
        if err == drv.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
            for p in self.buffers.values():
                drv.cuMemFree(p)
            self.buffers.clear()
            need = device_bytes(self.plan, self.layout)
            free, total = _check(drv.cuMemGetInfo())
            raise KernelError(f"out of GPU memory allocating {name} ({nbytes / 1e9:.3f} GB): {self.plan.kernel_name} "
                              f"needs {need.total / 1e9:.3f} GB (weights {need.weights / 1e9:.3f} GB, KV cache "
                              f"{need.kv_cache / 1e9:.3f} GB, scratch {need.scratch / 1e9:.3f} GB); "
                              f"{free / 1e9:.3f} GB of the device's {total / 1e9:.3f} GB are free")
        ptr = _check((err, ptr))
        self.buffers[name] = int(ptr)
        if fill is not None:
            _check(drv.cuMemsetD32(ptr, fill, max(nbytes, 16) // 4))

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Pack HF-named weights into the plan's layout and upload them. CUDA torch tensors are
        packed on the GPU and copied device to device."""
        if self.check_weights:
            check_tensors(weights)
        first = next(iter(weights.values()))
        if getattr(first, "is_cuda", False):
            from .weights import pack_weights_torch

            packed = pack_weights_torch(self.layout, weights)
            import torch

            torch.cuda.synchronize()
            self._copy_packed_device(packed.data_ptr(), packed.numel() * 2)
            del packed
        else:
            self._copy_packed(pack_weights(self.layout, weights))

    def load_packed_device(self, ptr: int, nbytes: int) -> None:
        """Copy an already packed buffer that lives on this device (e.g. a torch tensor)."""
        if self.check_weights and nbytes == self.layout.weights.total_bytes:
            drv = _driver()
            host = np.empty(nbytes, np.uint8)
            _check(drv.cuMemcpyDtoH(host.ctypes.data, ptr, nbytes))
            check_packed(self.layout, host)
        self._copy_packed_device(ptr, nbytes)

    def _copy_packed_device(self, ptr: int, nbytes: int) -> None:
        drv = _driver()
        if nbytes != self.layout.weights.total_bytes:
            raise KernelError(f"packed weights are {nbytes} B; the plan's layout needs {self.layout.weights.total_bytes}")
        _check(drv.cuMemcpyDtoD(self.buffers["weights"], ptr, nbytes))

    def load_packed(self, packed: np.ndarray) -> None:
        """Upload an already packed buffer (uint16 bf16 bits, ada_mk.runtime.weights.pack_weights)."""
        packed = np.ascontiguousarray(packed, dtype=np.uint16)
        if self.check_weights and packed.nbytes == self.layout.weights.total_bytes:
            check_packed(self.layout, packed)
        self._copy_packed(packed)

    def _copy_packed(self, packed: np.ndarray) -> None:
        drv = _driver()
        packed = np.ascontiguousarray(packed, dtype=np.uint16)
        if packed.nbytes != self.layout.weights.total_bytes:
            raise KernelError(f"packed weights are {packed.nbytes} B; the plan's layout needs "
                              f"{self.layout.weights.total_bytes}")
        _check(drv.cuMemcpyHtoD(self.buffers["weights"], packed.ctypes.data, packed.nbytes))

    def reset(self) -> None:
        """Forget every sequence: positions start again at 0 (the cache is simply overwritten).
        Also the way back after a wait timed out: the counters and step counts restart, the
        scratch is poisoned again (no word of an earlier step carries a new step's epoch), and the
        timeout record is cleared (keeping the limit)."""
        drv = _driver()
        _check(drv.cuStreamSynchronize(self.stream))
        _check(drv.cuMemsetD32(self.buffers["k_cache"], 0, self.layout.kv_elems_per_layer * self.plan.model.num_hidden_layers // 2))
        _check(drv.cuMemsetD32(self.buffers["v_cache"], 0, self.layout.kv_elems_per_layer * self.plan.model.num_hidden_layers // 2))
        _check(drv.cuMemsetD32(self.buffers["counters"], 0, self.layout.counters.total_bytes // 4))
        _check(drv.cuMemsetD32(self.buffers["scratch"], 0xFFFFFFFF, self.layout.scratch.total_bytes // 4))
        _check(drv.cuMemsetD32(self.buffers["timeout"], 0, _WaitTimeout.limit_ns.offset // 4))
        _check(drv.cuMemsetD32(self.buffers["bad_input"], 0, ctypes.sizeof(_BadInput) // 4))
        _check(drv.cuMemsetD32(self.buffers["steps"], 0, self.plan.sms))
        self.launched = 0

    # ---------------------------------------------------------------------------- stepping
    def _validate(self, tokens: np.ndarray, positions: np.ndarray) -> None:
        if tokens.shape != (self.batch,) or positions.shape != (self.batch,):
            raise KernelError(f"expected {self.batch} tokens and positions (the plan's batch); got "
                              f"{tokens.shape[0]} and {positions.shape[0]}")
        if tokens.min() < 0 or tokens.max() >= self.vocab:
            raise KernelError(f"token ids must be in [0, {self.vocab}); got {tokens.tolist()}")
        if positions.min() < 0 or positions.max() >= self.plan.deploy.max_context:
            raise KernelError(f"positions must be in [0, {self.plan.deploy.max_context}) (the KV cache's size); "
                              f"got {positions.tolist()}")

    def launch(self, slot: int = 0) -> None:
        """Launch one decode step reading tokens/positions buffer `slot` and writing the other,
        without synchronising: steps chain on the device."""
        drv = _driver()
        self.launched += 1
        b = self.buffers
        args = _Args(b["weights"], b["scratch"], b["counters"], b["k_cache"], b["v_cache"],
                     b[f"tokens{slot}"], b[f"positions{slot}"], b[f"tokens{1 - slot}"], b[f"positions{1 - slot}"],
                     b["steps"], b["timeout"], b["bad_input"], b.get("profile", 0))
        self._args = args  # keep alive until the launch has read it
        params = (ctypes.c_void_p * 1)(ctypes.addressof(args))
        p = self.plan
        _check(drv.cuLaunchCooperativeKernel(self.kernel, p.sms, 1, 1, p.threads, 1, 1, p.smem_bytes,
                                             self.stream, ctypes.addressof(params)))

    def synchronize(self) -> None:
        drv = _driver()
        try:
            _check(drv.cuStreamSynchronize(self.stream))
        finally:
            self._check_faults()

    def _check_faults(self) -> None:
        """Raise KernelError for what the kernel recorded: a wait that timed out (reset() to go
        on), or a step that refused its tokens or positions (it ran nothing; cleared here)."""
        drv = _driver()
        rec = _WaitTimeout()
        _check(drv.cuMemcpyDtoH(ctypes.addressof(rec), self.buffers["timeout"], ctypes.sizeof(rec)))
        if rec.flag:
            kind = KIND_NAMES[rec.kind] if 0 <= rec.kind < len(KIND_NAMES) else rec.kind
            polled = "q/k/v words" if rec.counter == -1 else "attention splits' partials"  # adamk/sync.cuh
            what = (f"counter {rec.counter} (value {rec.value}, target {rec.target})" if rec.counter >= 0
                    else f"its {polled} of step {rec.target}")
            raise KernelError(f"dependency wait timed out: SM {rec.sm}, task {kind} layer {rec.layer} index "
                              f"{rec.task} waited on {what}")
        bad = _BadInput()
        _check(drv.cuMemcpyDtoH(ctypes.addressof(bad), self.buffers["bad_input"], ctypes.sizeof(bad)))
        if bad.flag:
            _check(drv.cuMemsetD32(self.buffers["bad_input"], 0, ctypes.sizeof(_BadInput) // 4))
            raise KernelError(f"a step refused its inputs and ran nothing: sequence {bad.sequence} has token "
                              f"{bad.token} (expected [0, {self.vocab})) at position {bad.position} "
                              f"(expected [0, {self.plan.deploy.max_context}))")

    def step(self, tokens, positions, want_logits: bool = False):
        """One decode step for the whole batch: returns next tokens [B] (and logits [B, V] f32)."""
        drv = _driver()
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        positions = np.ascontiguousarray(positions, dtype=np.int32).reshape(-1)
        self._validate(tokens, positions)
        b = self.buffers
        _check(drv.cuMemcpyHtoD(b["tokens0"], tokens.ctypes.data, tokens.nbytes))
        _check(drv.cuMemcpyHtoD(b["positions0"], positions.ctypes.data, positions.nbytes))
        self.launch(0)
        self.synchronize()
        out = np.empty(self.batch, np.int32)
        _check(drv.cuMemcpyDtoH(out.ctypes.data, b["tokens1"], out.nbytes))
        if not want_logits:
            return out
        logits = np.empty((self.batch, self.vocab), np.float32)
        off = self.layout.scratch.globals_["logits"].offset * 4
        _check(drv.cuMemcpyDtoH(logits.ctypes.data, b["scratch"] + off, logits.nbytes))
        return out, logits

    def generate(self, prompt: np.ndarray, n: int) -> np.ndarray:
        """Greedy decoding: prompt [B, T] token ids (fed one step at a time), then n new tokens [B, n]."""
        prompt = np.asarray(prompt, np.int32).reshape(self.batch, -1)
        T = prompt.shape[1]
        if T + n > self.plan.deploy.max_context:
            raise KernelError(f"prompt {T} + {n} new tokens exceed the KV cache ({self.plan.deploy.max_context})")
        nxt = None
        for t in range(T):
            nxt = self.step(prompt[:, t], np.full(self.batch, t, np.int32))
        out = np.empty((self.batch, n), np.int32)
        for i in range(n):
            out[:, i] = nxt
            if i + 1 < n:
                nxt = self.step(nxt, np.full(self.batch, T + i, np.int32))
        return out

    def read_profile(self) -> np.ndarray:
        """Task times of the last step (profile builds): [SM][task][wait start, inputs ready,
        input staged, end] in ns of %globaltimer; tasks in each SM's order (plan.sm_tasks(sm))."""
        drv = _driver()
        out = np.zeros((self.plan.sms, self.max_tasks, 4), np.uint64)
        _check(drv.cuMemcpyDtoH(out.ctypes.data, self.buffers["profile"], out.nbytes))
        return out

    def time_steps(self, start_position: int, steps: int, warmup: int = 8) -> float:
        """Milliseconds per decode step, chained on the device (each step reads the tokens and
        positions the previous one wrote), timed with CUDA events around `steps` launches."""
        drv = _driver()
        b = self.buffers
        tok = np.ones(self.batch, np.int32)
        pos = np.full(self.batch, start_position, np.int32)
        self._validate(tok, pos + warmup + steps)
        _check(drv.cuMemcpyHtoD(b["tokens0"], tok.ctypes.data, tok.nbytes))
        _check(drv.cuMemcpyHtoD(b["positions0"], pos.ctypes.data, pos.nbytes))
        for i in range(warmup):
            self.launch(i % 2)
        start, stop = _check(drv.cuEventCreate(0)), _check(drv.cuEventCreate(0))
        _check(drv.cuEventRecord(start, self.stream))
        for i in range(warmup, warmup + steps):
            self.launch(i % 2)
        _check(drv.cuEventRecord(stop, self.stream))
        self.synchronize()
        ms = _check(drv.cuEventElapsedTime(start, stop))
        drv.cuEventDestroy(start)
        drv.cuEventDestroy(stop)
        return ms / steps

    def close(self) -> None:
        drv = _driver()
        for ptr in self.buffers.values():
            drv.cuMemFree(ptr)
        self.buffers.clear()
        drv.cuModuleUnload(self.module)
        drv.cuDevicePrimaryCtxRelease(self.device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
