"""The C ABI shared library on the GPU: smollm2-135m with random weights, driven through ctypes,
against the float32 NumPy reference executor.

A short prompt, then 8 decode steps; both sides are fed the same tokens (the reference's greedy
choice), so one near-tie cannot derail the rest. Every step's logits must match the reference
within relative error 2e-2, and the kernel's greedy token must be the reference's wherever the
reference's top-2 margin is clear (> 1e-2 of its largest logit).

The library is built with nvcc on the CPU machine into the build cache that travels here:
    ADAMK_CACHE=.devbuild python -m tests.gpu.test_capi_gpu      # prebuild
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest

from ada_mk.codegen.build import Artifacts, build
from ada_mk.codegen.render import render
from ada_mk.config import load_config
from ada_mk.ir.build import build_decode_graph
from ada_mk.ir.reference import ReferenceExecutor
from ada_mk.runtime.capi import ADAMK_ERR_ARGUMENT, ADAMK_ERR_TIMEOUT, ADAMK_OK, SharedLibrary
from ada_mk.search.layout import make_layout
from ada_mk.search.plan import Plan
from ada_mk.search.planner import make_plan

from .kernels import STUCK

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [1, 4093, 17, 30000, 512]
DECODE_STEPS = 8
REL_TOL = 2e-2
CLEAR_MARGIN = 1e-2  # of the reference's largest |logit|
SEED = 1234


def make_smollm2() -> Plan:
    m, d = load_config(ROOT / "configs" / "smollm2-135m.yaml")
    return make_plan(m, d)


def library_for(plan: Plan, defines: tuple[str, ...] = (), log=None) -> Artifacts:
    return build(render(plan), ["sm_90a"], library=True, log=log, defines=defines)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def to_bf16_exact(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bf16 (even on ties), kept as float32: packing is then exact,
    and the reference sees the very weights the kernel does."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_smollm2()


@pytest.fixture(scope="module")
def weights(plan: Plan) -> dict[str, np.ndarray]:
    """Random HF-named weights, initialised as HF does (0.02 noise; norms near 1)."""
    rng = np.random.default_rng(SEED)
    graph = build_decode_graph(plan.model, None, batch=plan.batch, max_context=plan.deploy.max_context)
    out = {}
    for t in graph.weights():
        noise = rng.standard_normal(t.shape, dtype=np.float32)
        w = 1 + 0.1 * noise if t.name.endswith("norm.weight") else 0.02 * noise
        out[t.name] = to_bf16_exact(w)
    return out


@pytest.fixture(scope="module")
def packed(plan: Plan, weights: dict[str, np.ndarray]) -> np.ndarray:
    from ada_mk.runtime.weights import pack_weights

    return pack_weights(make_layout(plan), weights)


@pytest.fixture(scope="module")
def reference(plan: Plan, weights: dict[str, np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """The fed tokens (prompt, then the reference's greedy choices) and its logits [B, V] at each."""
    ref = ReferenceExecutor(plan.model, weights, batch=plan.batch, max_context=plan.deploy.max_context)
    fed, logits = [], []
    token = PROMPT[0]
    for t in range(len(PROMPT) + DECODE_STEPS):
        fed.append(token)
        logits.append(ref.step(np.array([token]), np.array([t])).copy())
        token = PROMPT[t + 1] if t + 1 < len(PROMPT) else int(np.argmax(logits[-1][0]))
    return fed, logits


@pytest.fixture(scope="module")
def lib(plan: Plan, packed: np.ndarray):
    lib = SharedLibrary(library_for(plan).library)
    lib.create(packed, device=0)
    yield lib
    lib.close()


def run_steps(lib: SharedLibrary, fed: list[int]) -> tuple[list[int], list[np.ndarray]]:
    tokens, logits = [], []
    for pos, tok in enumerate(fed):
        nxt, lg = lib.decode([tok], [pos], want_logits=True)
        tokens.append(int(nxt[0]))
        logits.append(lg)
    return tokens, logits


def test_decode_matches_reference(lib: SharedLibrary, reference) -> None:
    fed, ref_logits = reference
    tokens, logits = run_steps(lib, fed)
    errs = [rel_err(k, r) for k, r in zip(logits, ref_logits)]
    print(f"rel err per step: {' '.join(f'{e:.1e}' for e in errs)}")
    assert max(errs) <= REL_TOL, errs
    for step, (tok, k, r) in enumerate(zip(tokens, logits, ref_logits)):
        assert tok == int(np.argmax(k[0])), f"step {step}: next token is not the argmax of the logits"
        top2 = np.sort(r[0])[-2:]
        if top2[1] - top2[0] > CLEAR_MARGIN * np.abs(r[0]).max():
            assert tok == int(np.argmax(r[0])), f"step {step}: kernel {tok}, reference {np.argmax(r[0])}"


def test_refuses_bad_inputs_then_continues(lib: SharedLibrary, plan: Plan, reference) -> None:
    fed, ref_logits = reference
    lib.reset()
    for tok, pos, what in ((plan.model.vocab_size, 0, "token"), (-1, 0, "token"),
                           (0, plan.deploy.max_context, "position"), (0, -1, "position")):
        with pytest.raises(RuntimeError, match=what):
            lib.decode([tok], [pos])
    # Nothing ran: the session is intact. After a reset, the same tokens give the same results.
    tokens, logits = run_steps(lib, fed[:3])
    lib.reset()
    again, logits2 = run_steps(lib, fed[:3])
    assert again == tokens
    for a, b in zip(logits, logits2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    assert rel_err(logits[0], ref_logits[0]) <= REL_TOL


def test_weights_from_device_pointer(plan: Plan, packed: np.ndarray, lib: SharedLibrary, reference) -> None:
    """weights_on_device = 1: the packed buffer already on the GPU (allocated here with the driver
    API, in the primary context the library's runtime also uses)."""
    from cuda.bindings import driver as cu

    def check(result):
        err, *rest = result
        assert err == cu.CUresult.CUDA_SUCCESS, err
        return rest[0] if rest else None

    check(cu.cuInit(0))
    dev = check(cu.cuDeviceGet(0))
    ctx = check(cu.cuDevicePrimaryCtxRetain(dev))
    check(cu.cuCtxSetCurrent(ctx))
    ptr = check(cu.cuMemAlloc(packed.nbytes))
    try:
        check(cu.cuMemcpyHtoD(ptr, packed.ctypes.data, packed.nbytes))
        other = SharedLibrary(lib.path)
        other.create(int(ptr), device=0)
        try:
            fed, ref_logits = reference
            _, logits = run_steps(other, fed[:2])
        finally:
            other.close()
        lib.reset()
        _, expected = run_steps(lib, fed[:2])
        for a, b in zip(logits, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
        # The size is checked for device pointers too.
        session = ctypes.c_void_p()
        assert other.lib.adamk_create(int(ptr), 2, 0, 1, ctypes.byref(session)) == ADAMK_ERR_ARGUMENT
        assert session.value is None
    finally:
        check(cu.cuMemFree(ptr))
        check(cu.cuDevicePrimaryCtxRelease(dev))


def test_stuck_wait_returns_timeout(plan: Plan, packed: np.ndarray, reference) -> None:
    """A library whose wait for layer 0's gate/up tiles targets one count too many (built only
    for this test) returns ADAMK_ERR_TIMEOUT within the limit, naming the task and counter,
    instead of hanging; the session refuses to decode until adamk_reset, and after it times out
    again (as it must) with the GPU free. The correct library still agrees afterwards."""
    import time

    lib = SharedLibrary(library_for(plan, STUCK).library)
    s = lib.lib
    tokens, positions, nxt = (np.zeros(plan.batch, np.int32) for _ in range(3))
    args = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)) for a in (tokens, positions, nxt)]
    try:
        lib.create(packed)
        assert s.adamk_set_wait_limit(lib._session, 0.0) == ADAMK_ERR_ARGUMENT
        assert "wait limit" in lib.last_error()
        assert s.adamk_set_wait_limit(lib._session, 40.0) == ADAMK_OK
        for attempt in range(2):
            t0 = time.perf_counter()
            assert s.adamk_decode(lib._session, *args, None) == ADAMK_ERR_TIMEOUT
            took = time.perf_counter() - t0
            msg = lib.last_error()
            print(f"stuck step {attempt}: {1e3 * took:.0f} ms: {msg}")
            assert "ran past 40 ms" in msg and "call adamk_reset" in msg
            assert took < 2.0
            assert s.adamk_decode(lib._session, *args, None) == ADAMK_ERR_TIMEOUT
            assert "an earlier step timed out" in lib.last_error()
            assert s.adamk_reset(lib._session) == ADAMK_OK
    finally:
        lib.close()
    fed, ref_logits = reference
    good = SharedLibrary(library_for(plan).library)
    try:
        good.create(packed)
        _, logits = run_steps(good, fed)
    finally:
        good.close()
    assert max(rel_err(k, r) for k, r in zip(logits, ref_logits)) <= REL_TOL


if __name__ == "__main__":
    p = make_smollm2()
    for defines in ((), STUCK):
        art = library_for(p, defines, log=lambda s: print("  " + s[:160], file=sys.stderr))
        print(f"{p.kernel_name} {' '.join(defines)}: {art.library}", file=sys.stderr)
