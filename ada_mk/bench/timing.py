"""Timing on the card (or, for the CPU smoke run, the host clock): CUDA-event windows of chained
steps, the read and copy bandwidth, what the card is, and freeing memory between systems.
torch is imported inside functions only.
"""
from __future__ import annotations

import gc
import time
from typing import Callable


def cuda_ready() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def sync() -> None:
    import torch

    if cuda_ready():
        torch.cuda.synchronize()


def free() -> None:
    import torch

    gc.collect()
    if cuda_ready():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def memory_text() -> str:
    import torch

    if not cuda_ready():
        return "(no CUDA)"
    free, total = torch.cuda.mem_get_info()
    return (f"GPU memory: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated by torch, "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free")


def time_windows(step: Callable[[int], object], steps: int, windows: int,
                 before: Callable[[], object] | None = None) -> list[float]:
    """ms per step of each window of `steps` calls, by CUDA events around the window."""
    import torch

    out = []
    for _ in range(windows):
        if before is not None:
            before()
        if not cuda_ready():  # the CPU smoke run
            t0 = time.perf_counter()
            for i in range(steps):
                step(i)
            out.append((time.perf_counter() - t0) * 1e3 / steps)
            continue
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(steps):
            step(i)
        e1.record()
        e1.synchronize()
        out.append(e0.elapsed_time(e1) / steps)
    return out


def measure_bandwidth(gb: float = 4.0, repeats: int = 10, device: str = "cuda") -> dict:
    """Read-only bandwidth (best of `repeats` reductions over `gb` GB of bf16, counting the bytes
    read) and copy bandwidth (read + write counted), in GB/s."""
    import torch

    n = int(gb * 1e9) // 4 * 2
    x = torch.empty(n, dtype=torch.bfloat16, device=device).uniform_(-1, 1)
    methods = {
        "x.sum() over bf16": lambda: x.sum(),
        "x.view(float32).sum()": lambda: x.view(torch.float32).sum(),
        "x.view(int32).amax()": lambda: x.view(torch.int32).amax(),
    }
    best, how = 0.0, ""
    for name, fn in methods.items():
        fn()
        ms = min(time_windows(lambda i: fn(), 1, repeats))
        gbs = x.numel() * 2 / ms / 1e6
        if gbs > best:
            best, how = gbs, name
    y = torch.empty_like(x)
    y.copy_(x)
    ms = min(time_windows(lambda i: y.copy_(x), 1, repeats))
    copy = 2 * x.numel() * 2 / ms / 1e6
    del x, y
    free()
    return {"read_gbs": best, "read_method": f"{how}, {n * 2 / 1e9:.1f} GB, best of {repeats}", "copy_gbs": copy}


def card_meta(device: str = "cuda") -> dict:
    import torch

    if device != "cuda":
        import platform

        meta = {"card": f"CPU ({platform.processor() or platform.machine()})", "card_memory_gib": 0.0,
                "torch": torch.__version__, "cuda": None, "dtype": "float32"}
    else:
        props = torch.cuda.get_device_properties(0)
        meta = {"card": torch.cuda.get_device_name(0), "card_memory_gib": props.total_memory / 2**30,
                "sms": props.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
                "dtype": "bf16"}
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        meta["transformers"] = None
    return meta
