"""MegaKernelEngine's checks that need no GPU (the driver stubbed where it is called):
check_weights=True scans before it uploads, and running out of device memory frees what was
allocated and says how much the plan needs."""
from __future__ import annotations

import numpy as np
import pytest

from ada_mk.runtime.weights import pack_weights
from ada_mk.search.layout import make_layout
from tests.test_weights_check import random_weights, small_plan


@pytest.fixture(scope="module")
def bf16_plan():
    return small_plan()


def test_engine_checks_before_it_uploads(bf16_plan) -> None:
    """MegaKernelEngine(check_weights=True): load_weights names the HF tensor, load_packed the
    segment, and neither uploads anything (the upload is stubbed: no GPU here)."""
    from ada_mk.runtime.engine import MegaKernelEngine

    eng = MegaKernelEngine.__new__(MegaKernelEngine)  # no CUDA context: only the checks run
    eng.plan, eng.layout, eng.check_weights = bf16_plan, make_layout(bf16_plan), True
    uploads: list[int] = []
    eng._copy_packed = lambda packed: uploads.append(packed.nbytes)
    rng = np.random.default_rng()
    w = random_weights(bf16_plan, rng)
    eng.load_weights(w)
    assert uploads == [eng.layout.weights.total_bytes]
    w["model.layers.1.self_attn.k_proj.weight"][2, 3] = np.inf
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' holds inf at index \(2, 3\)"):
        eng.load_weights(w)
    eng.check_weights = False
    packed = pack_weights(eng.layout, w)
    eng.check_weights = True
    with pytest.raises(ValueError, match="segment wqkv of layer 1"):
        eng.load_packed(packed)
    assert len(uploads) == 1


def test_engine_out_of_memory_frees_and_names_sizes(bf16_plan, monkeypatch) -> None:
    """MegaKernelEngine._alloc when the device runs out (a stand-in driver, no GPU here): what was
    allocated is freed and the KernelError gives the plan's sizes and the free memory."""
    from types import SimpleNamespace

    from ada_mk.runtime import engine
    from ada_mk.search.device_memory import device_bytes

    ok, oom = object(), object()
    live: set[int] = set()
    budget = [3]  # allocations that succeed

    def alloc(n):
        if not budget[0]:
            return oom, 0
        budget[0] -= 1
        live.add(len(live) + 1000)
        return ok, max(live)

    fake = SimpleNamespace(CUresult=SimpleNamespace(CUDA_SUCCESS=ok, CUDA_ERROR_OUT_OF_MEMORY=oom),
                           cuMemAlloc=alloc, cuMemFree=lambda p: (live.discard(p), ok)[1],
                           cuMemsetD32=lambda *a: ok, cuMemGetInfo=lambda: (ok, 5 * 10**8, 8 * 10**10))
    monkeypatch.setattr(engine, "_driver", lambda: fake)
    eng = engine.MegaKernelEngine.__new__(engine.MegaKernelEngine)
    eng.plan, eng.layout, eng.buffers = bf16_plan, make_layout(bf16_plan), {}
    for name in ("a", "b", "c"):
        eng._alloc(name, 64, fill=0)
    assert len(live) == 3
    with pytest.raises(engine.KernelError) as e:
        eng._alloc("k_cache", 10**9)
    need = device_bytes(bf16_plan)
    msg = str(e.value)
    assert not live and not eng.buffers
    assert msg.startswith("out of GPU memory allocating k_cache (1.000 GB)") and f"needs {need.total / 1e9:.3f} GB" in msg
    assert "0.500 GB of the device's 80.000 GB are free" in msg
