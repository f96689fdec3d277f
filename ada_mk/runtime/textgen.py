"""Text generation around a decode step: the prefill, the decode loop and host-side sampling,
over the MegaKernel (`kernel_backend`) or the NumPy reference executor (`reference_backend`).
What `adamk-run` runs.

A backend is (prefill, step, close): `prefill(prompt)` and `step(token, position)` return the
greedy next token and the logits (None where not asked for).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..config import DeployConfig, ModelConfig

def sample(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """One token from logits [V]: greedy at temperature 0, else softmax(logits / T) restricted to
    the top_k most likely (0: all) and to the smallest set whose mass reaches top_p."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    order = np.argsort(-z, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


@dataclass
class Stats:
    """Times of one generation, in seconds."""

    load_s: float = 0.0  # checkpoint, plan, build and weights
    ttft_s: float = 0.0  # prefill up to the first generated token
    decode_s: list[float] = field(default_factory=list)  # each later step
    prompt_tokens: int = 0


def generate(step_logits: Callable[[int, int], tuple[int, np.ndarray | None]], prefill: Callable[[list[int]], tuple[int, np.ndarray | None]],
             prompt: list[int], n: int, *, temperature: float, top_k: int, top_p: float, seed: int | None,
             stop_ids: list[int], on_token: Callable[[int], None], stats: Stats) -> list[int]:
    """Prefill, then up to n tokens; stops after a stop token. `prefill(prompt)` and
    `step_logits(token, position)` return (greedy next token, logits or None)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    greedy, logits = prefill(prompt)
    tok = greedy if temperature <= 0 else sample(logits, temperature, top_k, top_p, rng)
    stats.ttft_s = time.perf_counter() - t0
    out = [tok]
    on_token(tok)
    pos = len(prompt)
    while len(out) < n and tok not in stop_ids:
        t = time.perf_counter()
        greedy, logits = step_logits(tok, pos)
        tok = greedy if temperature <= 0 else sample(logits, temperature, top_k, top_p, rng)
        stats.decode_s.append(time.perf_counter() - t)
        out.append(tok)
        on_token(tok)
        pos += 1
    return out


Next = tuple[int, "np.ndarray | None"]  # the greedy next token, and the logits when asked for


def reference_backend(model: ModelConfig, weights: Any, context: int,
                      want_logits: bool) -> tuple[Callable[[list[int]], Next], Callable[[int, int], Next], Callable[[], None]]:
    """(prefill, step, close) of the NumPy reference executor; it always returns the logits."""
    from ..ir.reference import ReferenceExecutor

    ex = ReferenceExecutor(model, weights, 1, context)

    def step(tok: int, pos: int):
        lg = ex.step(np.array([tok]), np.array([pos]))[0]
        return int(np.argmax(lg)), lg

    def prefill(prompt: list[int]):
        lg = ex.prefill(np.asarray(prompt)[None])[0]
        return int(np.argmax(lg)), lg

    return prefill, step, lambda: None


def kernel_backend(model: ModelConfig, deploy: DeployConfig, weights: Any, prefill_mode: str, want_logits: bool,
                   log: Callable[[str], None] | None = None, quantized: Any = None,
                   int4: Any = None) -> tuple[Any, ...]:
    """(prefill, step, close, plan, prefill mode) of the MegaKernel for (model, deploy): planned,
    built into the build cache (nvcc on a miss), loaded with `weights` (an 8-bit plan streams the
    checkpoint's own 8-bit matrices, `quantized`, as stored where their format is the plan's, an
    int4 plan its 4-bit matrices, `int4`, and each quantizes the rest on load). prefill_mode "auto" is
    "torch" (batched PyTorch writing the kernel's KV cache) where torch sees a GPU, else "kernel"
    (token by token through the kernel)."""
    engine, plan = load_engine(model, deploy, weights, log, quantized, int4)
    prefill_mode = resolve_prefill_mode(prefill_mode)
    hybrid = None
    if prefill_mode == "torch":
        from .hybrid import HybridPrefill

        hybrid = HybridPrefill(engine)

    def step(tok: int, pos: int):
        r = engine.step(np.array([tok], np.int32), np.array([pos], np.int32), want_logits=want_logits)
        return (int(r[0][0]), r[1][0]) if want_logits else (int(r[0]), None)

    def prefill(prompt: list[int]):
        if hybrid is not None:
            nxt, lg = hybrid.prefill(np.asarray(prompt, np.int32)[None])
            return int(nxt[0]), lg[0]
        r = None
        for t, tok in enumerate(prompt):
            r = step(tok, t)
        return r

    return prefill, step, engine.close, plan, prefill_mode


def load_engine(model: ModelConfig, deploy: DeployConfig, weights: Any, log: Callable[[str], None] | None = None,
                quantized: Any = None, int4: Any = None) -> tuple[Any, Any]:
    """(MegaKernelEngine, plan) for (model, deploy): planned, built into the build cache (nvcc on
    a miss), loaded with `weights` (see kernel_backend for `quantized` and `int4`)."""
    from ..codegen.build import build
    from ..codegen.render import render
    from ..search.device_memory import check_fits_device
    from ..search.planner import make_plan
    from .engine import MegaKernelEngine

    plan = make_plan(model, deploy)
    check_fits_device(plan)  # before nvcc and cuMemAlloc: the sizes, in one line
    art = build(render(plan), [deploy.gpu.nvcc_arch], library=False, log=log)
    engine = MegaKernelEngine(plan, art.fatbin)
    if (quantized or int4) and deploy.weights != "bf16":
        from ..checkpoints.pack import PackingSources

        weights = PackingSources(weights, quantized or {}, engine.layout, int4)
    engine.load_weights(weights)
    return engine, plan


def resolve_prefill_mode(prefill_mode: str) -> str:
    """"auto" is "torch" (the hybrid prefill) where torch sees a GPU, else "kernel"."""
    if prefill_mode != "auto":
        return prefill_mode
    try:
        import torch

        return "torch" if torch.cuda.is_available() else "kernel"
    except ImportError:
        return "kernel"
