"""What an adamk-bench run measures (Spec), where its timed window lies, and the MegaKernels it
loads: planned and built through the code generator, found in the build cache ($ADAMK_CACHE) when
prebuilt. No torch here: --build-only and the CPU tests use this module without it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import load_config
from ..config.gpus import GPUS, find_gpu


@dataclass
class Spec:
    configs: list[Path]
    batch: int = 1
    contexts: list[int] = field(default_factory=lambda: [512])
    steps: int = 128
    windows: int = 5
    warmup: int = 8
    systems: tuple[str, ...] = ("megakernel", "eager", "compile-flex", "compile-sdpa")
    gpu_plan: str = "auto"
    planner: str = "gen"
    arch: str = "sm_90a"
    check: bool = True
    seed: int | None = None
    per_context_compile: bool = False
    coordinate_descent: bool = True
    mk_fill: str = "random"  # or "decode"
    bw_gb: float = 4.0
    device: str = "cuda"  # "cpu": a smoke run of the orchestration (tests), no MegaKernel
    compile_backend: str | None = None  # None: inductor, mode="reduce-overhead" (tests: "aot_eager")
    weights: str | None = None  # the MegaKernel's weights format (--weights-format); None: the config's
    weights_group: int | None = None  # its scale group (--weights-group); None: the format's default


def config_name(path: Path) -> str:
    return path.stem


def window_start(context: int, steps: int) -> int:
    return max(0, context - steps // 2)


def round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def mk_max_context(context: int, steps: int, max_pos: int) -> int:
    """The MegaKernel's KV-cache size for a context: the smallest power of two >= 1024 that holds the
    timed window (so 512 -> 1024, as the GPU tests' prebuilt kernels), capped by the model."""
    need = window_start(context, steps) + steps + 1  # the engine wants every position < max_context
    size = 1024
    while size < need:
        size *= 2
    if size > max_pos:
        if max_pos < need:
            raise ValueError(f"context {context} + {steps // 2} steps exceeds the model's {max_pos} positions")
        size = max_pos
    return size


def plan_gpus(gpu_plan: str, device_name: str | None) -> list[str]:
    """Plans to try for the MegaKernel, in order. auto: the card's own GPUS entry (e.g. H200), then the
    H100 plan (same SM count and shared memory; the prebuilt one)."""
    if gpu_plan != "auto":
        spec = find_gpu(gpu_plan)
        if spec is None:
            raise ValueError(f"--gpu-plan {gpu_plan!r}: expected auto or one of {', '.join(GPUS)}")
        return [spec.name]
    found = find_gpu(device_name) if device_name else None
    names = [found.name] if found else []
    return names + ([] if "H100" in names else ["H100"])


def megakernel_build(config: Path, gpu: str, batch: int, max_context: int, planner: str, arch: str,
                     log: Callable[[str], None] | None = None, *, weights: str | None = None,
                     weights_group: int | None = None) -> tuple[Any, Any]:
    """(plan, artifacts) from the codegen API; nvcc runs only on a cache miss ($ADAMK_CACHE).
    `weights` / `weights_group`: the plan's weights format (None: the config's deploy section)."""
    from ..codegen.build import build
    from ..codegen.render import render

    m, d = load_config(config, gpu=gpu, batch=batch, max_context=max_context, weights=weights,
                       weights_group=weights_group)
    if planner == "gen":  # the plan adamk-gen emits
        from ..codegen.pipeline import plan_for

        plan = plan_for(m, d)
    elif planner == "simple":  # the round-robin baseline plan
        from ..search.planner import make_plan

        plan = make_plan(m, d, strategy="round-robin")
    elif planner == "search":
        from ..search.search import search_plan

        plan = search_plan(m, d)
    else:
        raise ValueError(f"planner {planner!r}")
    return plan, build(render(plan), [arch], library=False, log=log)


def megakernel_weights(spec: Spec, system: str) -> tuple[str | None, int | None]:
    """(format, scale group) of a MegaKernel system's plan: megakernel's from --weights-format /
    --weights-group (None: the config's), megakernel-fp8 / -int8 / -int4 theirs at the default group."""
    from .report import SYSTEM_WEIGHTS

    if system == "megakernel":
        return spec.weights, spec.weights_group
    return SYSTEM_WEIGHTS[system], None


def build_only(spec: Spec, log: Callable[[str], None]) -> None:
    """Build (or find in the cache) every MegaKernel a run with these arguments would load."""
    from .report import MEGAKERNEL_SYSTEMS

    gpus = plan_gpus(spec.gpu_plan, None) if spec.gpu_plan != "auto" else ["H100"]
    systems = [x for x in MEGAKERNEL_SYSTEMS if x in spec.systems]
    for cfg in spec.configs:
        m, _ = load_config(cfg)
        for size in sorted({mk_max_context(c, spec.steps, m.max_position_embeddings) for c in spec.contexts}):
            for gpu, system in ((g, x) for g in gpus for x in systems):
                t0 = time.time()
                weights, group = megakernel_weights(spec, system)
                plan, art = megakernel_build(cfg, gpu, spec.batch, size, spec.planner, spec.arch,
                                             log=lambda s: log("  " + s[:200]), weights=weights, weights_group=group)
                log(f"{plan.kernel_name} (max_context {size}): {art.fatbin} [{time.time() - t0:.1f} s]")
