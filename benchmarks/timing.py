"""What the kernel-timing scripts here share: the (config, batch) cases they time, an engine
loaded with random bf16 weights, and its decode ms/token at a context (chained steps, CUDA events,
median of windows). The engine parts run on the GPU machine only.
"""
from __future__ import annotations

import os

import numpy as np


def gpu_from_env() -> str:
    """The GPU the timed plans are made for: ADAMK_GPU (e.g. H200), else H100."""
    return os.environ.get("ADAMK_GPU", "H100")


def cases_from_env(default: str = "llama3.2-1b:1,llama3-8b:1") -> list[tuple[str, int]]:
    """(config, batch) pairs from ADAMK_CASES="llama3.2-1b:8,llama3-8b:8" (else `default`)."""
    out = []
    for case in os.environ.get("ADAMK_CASES", default).split(","):
        config, batch = case.split(":")
        out.append((config, int(batch)))
    return out


def random_engine(plan, fatbin, **engine_kw):
    """A MegaKernelEngine for `plan` with N(0, 0.02) bf16 weights, drawn on the GPU."""
    import torch

    from ada_mk.runtime.engine import MegaKernelEngine
    from ada_mk.search.layout import make_layout

    eng = MegaKernelEngine(plan, fatbin, **engine_kw)
    packed = torch.randn(make_layout(plan).weights.total, device="cuda", dtype=torch.bfloat16) * 0.02
    torch.cuda.synchronize()
    eng.load_packed_device(packed.data_ptr(), packed.numel() * 2)
    del packed
    torch.cuda.empty_cache()
    return eng


def kernel_ms_per_token(plan, fatbin, context: int, **engine_kw) -> float:
    """ms/token of one kernel with random weights at `context` (the engine is closed after)."""
    eng = random_engine(plan, fatbin, **engine_kw)
    try:
        return ms_per_token(eng, context)
    finally:
        eng.close()


def ms_per_token(eng, context: int, steps: int = 32, windows: int = 3) -> float:
    """Fill the KV cache to just below `context`, then the median of `windows` timed windows."""
    eng.time_steps(0, context - 8, warmup=0)
    return float(np.median([eng.time_steps(context - 8, steps) for _ in range(windows)]))
