"""What `adamk-tune` does: build the search's best few plans, time them on the GPU, keep the fastest.

The cost model ranks plans within a few percent of each other as equals and is only a model, so
the plans it predicts fastest are timed on the card: candidate 1 is the plan adamk-gen compiles
(ada_mk.search.search_plans keeps it first), the others follow in order of predicted time. Each
kernel steps with random weights from a KV cache filled to --context; all of them are loaded in
one process and timed in turns (a window of --steps chained steps each, for --rounds rounds, the
order rotated every round) so that clock or thermal drift does not favour one. A candidate's time
is the median of its windows. The winner is written like adamk-gen writes a kernel, into
OUT/<model>/<gpu>-bs<batch>/, with tune.json (the card, the date, the commit, every candidate's
predicted and measured time) beside it.

Where nvcc and the CUTLASS headers are but no GPU is, `--build-only` compiles the candidates into
the build cache ($ADAMK_CACHE); the same command without it, on the GPU machine with that cache,
then finds every kernel built (the search is deterministic, so it renders the same sources).
"""
from __future__ import annotations

import datetime
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from .config import DeployConfig, ModelConfig, load_config
from .fsutil import write_atomic
from .provenance import git_commit
from .search.device_memory import device_bytes
from .search.plan import Plan

WARMUP_STEPS = 8  # launches before each timed window (MegaKernelEngine.time_steps' default)
NO_GPU = ("no CUDA device here to measure on: run with --build-only here (ADAMK_CACHE=DIR), then the same "
          "command without it on the GPU machine, with that build cache")
BUILD_HINT = ("build the candidates with --build-only where nvcc and CUTLASS are, and bring that "
              "$ADAMK_CACHE here")  # a cache miss on the GPU machine
BUILD_ONLY_HINT = "--build-only compiles the candidates here"


class TuneError(Exception):
    """A failure the user can act on; str() is one line."""


@dataclass
class Candidate:
    """One plan under test and what is known of it."""

    label: str  # "search 1" (the plan adamk-gen compiles), "search 2", ..., "round-robin"
    plan: Plan
    predicted_s: float  # the cost model's step time at the timing context
    fatbin: Path | None = None  # None until built
    windows_ms: list[float] = field(default_factory=list)  # ms per step of each timed window

    @property
    def measured_ms(self) -> float | None:
        return statistics.median(self.windows_ms) if self.windows_ms else None


class Timer(Protocol):
    """What measures the candidates (GpuTimer on a GPU; tests pass a fake)."""

    def card(self) -> str:
        """The device's name; raises TuneError when there is none to measure on."""

    def __call__(self, kernels: Sequence[tuple[Plan, Path]], *, context: int, steps: int,
                 rounds: int) -> list[list[float]]:
        """For each kernel, in order: ms per step of each of its `rounds` windows."""


class GpuTimer:
    """Times kernels on CUDA device 0 through MegaKernelEngine, with random weights from torch
    (as benchmarks/quick_timing.py does)."""

    def card(self) -> str:
        try:
            import torch
        except ImportError:
            raise TuneError(f"torch is not installed; {NO_GPU}") from None
        if not torch.cuda.is_available():
            raise TuneError(NO_GPU)
        return torch.cuda.get_device_name(0)

    def __call__(self, kernels: Sequence[tuple[Plan, Path]], *, context: int, steps: int,
                 rounds: int) -> list[list[float]]:
        import torch

        from .runtime.engine import KernelError, MegaKernelEngine
        from .search.layout import make_layout

        layouts = [make_layout(plan) for plan, _ in kernels]
        # Every engine holds its own weights and KV cache for the whole run, so that the windows
        # can alternate; say so plainly rather than fail in cuMemAlloc. The random weights exist
        # beside the first engine only: the others copy that engine's.
        sizes = [device_bytes(p, lay).total for (p, _), lay in zip(kernels, layouts)]
        need = max(sum(sizes), sizes[0] + layouts[0].weights.total_bytes)
        free, _ = torch.cuda.mem_get_info(0)
        if need > 0.95 * free:
            raise TuneError(f"the {len(kernels)} candidates need {need / 2**30:.1f} GiB of device memory "
                            f"together (each keeps its own weights); {free / 2**30:.1f} GiB is free: pass "
                            f"fewer --candidates")
        engines = []
        try:
            torch.manual_seed(0)

            def random_weights(layout) -> None:
                """Random bf16 bytes in the engine's weights (8-bit plans: read as codes and scales;
                the timing does not depend on the values)."""
                w = torch.empty(layout.weights.total, device="cuda", dtype=torch.bfloat16).normal_(0.0, 0.02)
                torch.cuda.synchronize()
                engines[-1].load_packed_device(w.data_ptr(), layout.weights.total_bytes)
                del w
                torch.cuda.empty_cache()  # back to the driver, for the other engines' cuMemAlloc

            first = MegaKernelEngine(*kernels[0])
            engines.append(first)
            random_weights(layouts[0])
            for (plan, fatbin), layout in zip(kernels[1:], layouts[1:]):
                eng = MegaKernelEngine(plan, fatbin)
                engines.append(eng)
                if plan.weights == "bf16":
                    # bf16 packed weights are the HF tensors concatenated: the same bytes for every
                    # plan of one model (load_packed_device refuses another size).
                    eng.load_packed_device(first.buffers["weights"], layouts[0].weights.total_bytes)
                else:  # 8-bit chunks depend on the tiling
                    random_weights(layout)
            for eng in engines:
                eng.time_steps(0, context, warmup=0)  # fill the KV cache up to the context
            windows: list[list[float]] = [[] for _ in kernels]
            n = len(engines)
            for r in range(rounds):
                for j in range(n):
                    i = (r + j) % n  # rotate who goes first: no kernel always follows the same one
                    windows[i].append(engines[i].time_steps(context, steps, warmup=WARMUP_STEPS))
            return windows
        except KernelError as e:
            raise TuneError(_one_line(str(e))) from None
        finally:
            for eng in engines:
                eng.close()


def candidates_for(model: ModelConfig, deploy: DeployConfig, n: int, *, baseline: bool = False,
                   context: int = 512) -> list[Candidate]:
    """The n best distinct plans the search knows (fewer if it knows fewer), the plan adamk-gen
    compiles first, each validated; with `baseline`, the round-robin plan after them."""
    from .search.cost import simulate
    from .search.errors import PlanError
    from .search.planner import check_supported, make_plan
    from .search.search import search_plans
    from .search.validate import validate_plan

    try:
        check_supported(model)
        plans = [(f"search {i + 1}", p) for i, p in enumerate(search_plans(model, deploy, n))]
        if baseline:
            plans.append(("round-robin", make_plan(model, deploy, strategy="round-robin")))
        for _, p in plans:
            validate_plan(p)
    except PlanError as e:
        raise TuneError(f"no valid plan for {model.name} on {deploy.gpu.name} batch {deploy.batch}: "
                        f"{_one_line(str(e))}") from None
    return [Candidate(label, p, simulate(p, context=context).predicted_s) for label, p in plans]


def pick(cands: Sequence[Candidate], min_gain: float) -> Candidate:
    """The fastest measured candidate; the first (adamk-gen's plan) unless another is at least
    `min_gain` (a fraction) faster: a smaller difference is within the noise of the timing."""
    fastest = min(cands, key=lambda c: c.measured_ms)
    if cands[0].measured_ms <= fastest.measured_ms * (1 + min_gain):
        return cands[0]
    return fastest


def tune(config_path: Path, *, gpu: str | None = None, batch: int | None = None,
         max_context: int | None = None, n: int = 4, context: int = 512, steps: int = 64,
         rounds: int = 5, min_gain: float = 0.01, archs: Sequence[str] = (), baseline: bool = False,
         out_dir: Path = Path("out"), build_only: bool = False, timer: Timer | None = None,
         log: Callable[[str], None] = lambda msg: None,
         show: Callable[[str], None] = print, weights: str | None = None,
         weights_group: int | None = None) -> tuple[list[Candidate], Candidate | None, Path | None]:
    """What `adamk-tune` does. Returns the candidates, the winner and the output directory (both
    None with build_only). `timer` measures (default GpuTimer()); tests pass a fake one. Progress
    goes to `log`, the table of candidates to `show`. `weights` / `weights_group`:
    --weights-format / --weights-group (None: the config's)."""
    from .codegen import pipeline
    from .codegen.render import render

    model, deploy = load_config(config_path, gpu=gpu, batch=batch, max_context=max_context, weights=weights,
                                weights_group=weights_group)
    if context + WARMUP_STEPS + steps >= deploy.max_context:
        raise TuneError(f"--context {context} + {WARMUP_STEPS} warm-up + --steps {steps} steps must stay below "
                        f"the KV cache's {deploy.max_context} positions (--max-context)")
    try:
        all_archs = pipeline.target_archs(deploy, archs)
    except pipeline.EmitError as e:
        raise TuneError(str(e)) from None
    card = None
    if not build_only:
        timer = timer or GpuTimer()
        card = timer.card()  # before minutes of nvcc, not after

    log(f"{config_path}: {model.name} on {deploy.gpu.name}, batch {deploy.batch}: searching the {n} best plans")
    cands = candidates_for(model, deploy, n, baseline=baseline, context=context)
    from .cli.gen import output_dir_name

    target = out_dir / model.name / output_dir_name(deploy)
    try:
        for c in cands:
            # The same build as adamk-gen's (library included), so the winner's is a cache hit.
            art = pipeline.cached_build(render(c.plan), all_archs, target, log,
                                        hint=BUILD_ONLY_HINT if build_only else BUILD_HINT)
            c.fatbin = art.fatbin
    except pipeline.EmitError as e:
        raise TuneError(str(e)) from None
    if build_only:
        show(table(cands, None, context))
        log(f"built {len(cands)} candidates into the build cache "
            f"({art.directory.parent}); measure them on the GPU machine with that $ADAMK_CACHE")
        return cands, None, None

    log(f"timing {len(cands)} kernels on {card}: context {context}, {rounds} rounds of {steps} steps each")
    windows = timer([(c.plan, c.fatbin) for c in cands], context=context, steps=steps, rounds=rounds)
    for c, w in zip(cands, windows):
        c.windows_ms = list(w)
    winner = pick(cands, min_gain)
    show(table(cands, winner, context))

    from .ir import build_decode_graph

    graph = build_decode_graph(model, deploy)
    write_atomic(target / "ir.json", json.dumps(graph.to_json(), indent=1) + "\n")
    try:
        pipeline.emit(model, deploy, graph, target, log, archs=archs, plan=winner.plan)
    except pipeline.EmitError as e:
        raise TuneError(str(e)) from None
    record = tune_record(cands, winner, card=card, config_path=config_path, deploy=deploy, context=context,
                         steps=steps, rounds=rounds, min_gain=min_gain, archs=all_archs)
    path = write_atomic(target / "tune.json", json.dumps(record, indent=1) + "\n")
    first = cands[0].measured_ms
    log(f"done: {winner.label} ({winner.plan.plan_hash}) {winner.measured_ms:.4f} ms/step on {card}, "
        f"{100 * (winner.measured_ms / first - 1):+.1f}% against search 1; wrote it and {path.name} to {target}")
    return cands, winner, target


def table(cands: Sequence[Candidate], winner: Candidate | None, context: int) -> str:
    """Predicted against measured time per candidate; the winner marked with '*'."""
    lines = [f"{'':1} {'candidate':<12} {'plan':<10} {'smem B':>7} {'predicted ms':>12} {'measured ms':>11} "
             f"{'min..max of windows':>20} {'meas/pred':>9}   (context {context})"]
    for c in cands:
        mark = "*" if c is winner else ""
        row = f"{mark:1} {c.label:<12} {c.plan.plan_hash:<10} {c.plan.smem_bytes:>7} {c.predicted_s * 1e3:>12.4f}"
        if c.windows_ms:
            spread = f"{min(c.windows_ms):.4f}..{max(c.windows_ms):.4f}"
            row += f" {c.measured_ms:>11.4f} {spread:>20} {c.measured_ms / (c.predicted_s * 1e3):>9.3f}"
        lines.append(row)
    return "\n".join(lines)


def tune_record(cands: Sequence[Candidate], winner: Candidate, *, card: str, config_path: Path,
                deploy: DeployConfig, context: int, steps: int, rounds: int, min_gain: float,
                archs: Sequence[str]) -> dict:
    """tune.json: where, when and from what the measurement was made, and every candidate's times."""
    return {
        "card": card,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),  # $ADAMK_COMMIT on the GPU machine, as adamk-bench
        "config": str(config_path),
        "model": cands[0].plan.model.name,
        "gpu": deploy.gpu.name,
        "batch": deploy.batch,
        "max_context": deploy.max_context,
        "archs": list(archs),
        "timing": {"context": context, "steps": steps, "warmup_steps": WARMUP_STEPS, "rounds": rounds,
                   "statistic": "median of the rounds' windows", "min_gain": min_gain},
        "candidates": [{
            "label": c.label,
            "plan_hash": c.plan.plan_hash,
            "kernel": c.plan.kernel_name,
            "smem_bytes": c.plan.smem_bytes,
            "predicted_ms": round(c.predicted_s * 1e3, 6),
            "measured_ms": round(c.measured_ms, 6),
            "windows_ms": [round(w, 6) for w in c.windows_ms],
        } for c in cands],
        "winner": winner.plan.plan_hash,
    }


def _one_line(text: str) -> str:
    return " ".join(text.split())
