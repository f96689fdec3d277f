"""A few decode steps of a 2-layer SmolLM2-135M-shaped kernel (batch 1 and 4), random weights,
for compute-sanitizer (memcheck, racecheck); then the C ABI's own paths on the batch-1 library
(adamk_check_weights' scan, asynchronous steps, a second destroy):

    compute-sanitizer --tool memcheck python3 -m tests.gpu.sanitize_run
"""
import ctypes

import numpy as np

from ada_mk.runtime.engine import MegaKernelEngine
from ada_mk.search.layout import make_layout
from tests.gpu.kernels import kernel_for


def c_abi(plan, packed: np.ndarray) -> None:
    from cuda.bindings import driver as cu

    from ada_mk.runtime.capi import SharedLibrary
    from tests.gpu.test_capi_gpu import library_for

    lib = SharedLibrary(library_for(plan).library)
    with lib.create(packed, check_weights=True):
        lib.set_wait_limit(60_000.0)
        err, io = cu.cuMemAlloc(16 * plan.batch)  # tokens, positions, next tokens, next positions (int32)
        assert err == cu.CUresult.CUDA_SUCCESS, err
        cu.cuMemsetD32(io, 0, 4 * plan.batch)
        b = 4 * plan.batch
        for i in range(2):  # the second step feeds on the first
            src, dst = (int(io), int(io) + 2 * b) if i == 0 else (int(io) + 2 * b, int(io))
            lib.decode_async(0, src, src + b, dst, dst + b, 0)
        lib.synchronize(0)
        cu.cuMemFree(io)
        s = lib._session.value
    lib.lib.adamk_destroy(ctypes.c_void_p(s))  # a second destroy: ignored
    print("C ABI: check_weights, 2 async steps, destroy twice ok")


if __name__ == "__main__":
    rng = np.random.default_rng()
    for batch in (1, 4):
        plan, art = kernel_for("smollm2-135m", "H100", batch, 2)
        layout = make_layout(plan)
        packed = (rng.standard_normal(layout.weights.total, np.float32) * 0.05).view(np.uint32) >> 16
        eng = MegaKernelEngine(plan, art.fatbin, wait_limit_ms=60_000.0)  # the tools slow a step 100-1000x
        eng.load_packed(packed.astype(np.uint16))
        tok = rng.integers(0, plan.model.vocab_size, batch).astype(np.int32)
        for t in range(3):
            tok, logits = eng.step(tok, np.full(batch, t, np.int32), want_logits=True)
            assert np.isfinite(logits).all()
        eng.close()
        print(f"batch {batch}: 3 steps ok, tokens {tok.tolist()}")
        if batch == 1:
            c_abi(plan, packed.astype(np.uint16))
