"""The code generator's stages after the IR, as `adamk-gen` runs them.

    plan (ada_mk.search)  ->  plan.json
    render (templates)    ->  <stem>.cu, <stem>.schedule.inc, <stem>_host.cu, <stem>.h
    build (nvcc)          ->  <stem>.fatbin, lib<stem>.so     (unless --no-build)

<stem> is adamk_<model>_<gpu>_bs<batch> (Plan.file_stem): the files keep their names when the
plan changes, so a new plan reads as a modification; the plan hash lives inside them.

Every file lands in the output directory atomically (a reader sees the old file or the whole new
one). Failures the user can act on (a plan that does not fit the GPU, nvcc missing or failing)
raise EmitError with one line of text; the CLI prints it and exits with status 2.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

from ..config import DeployConfig, ModelConfig
from ..fsutil import write_atomic
from ..search.layout import make_layout
from ..search.plan import Plan
from ..search.device_memory import check_fits_device
from ..search.errors import PlanError
from ..search.planner import make_plan
from .build import ARCH_FLAGS, Artifacts, BuildError, build
from .render import Source, render

Log = Callable[[str], None]

BUILD_LOG = "nvcc.log"


class EmitError(Exception):
    """A stage failed for a reason the user can fix; str() is one line."""


def check_archs(archs: Iterable[str]) -> list[str]:
    """The extra architectures asked for, validated, in order, without repeats."""
    out: list[str] = []
    for a in archs:
        if a not in ARCH_FLAGS:
            raise EmitError(f"--arch = {a!r}: expected one of {', '.join(ARCH_FLAGS)}")
        if a not in out:
            out.append(a)
    return out


def target_archs(deploy: DeployConfig, extra: Iterable[str] = ()) -> list[str]:
    """The target GPU's architecture (sm_90a for Hopper), then any extra ones."""
    return check_archs([deploy.gpu.nvcc_arch, *extra])


def plan_for(model: ModelConfig, deploy: DeployConfig) -> Plan:
    """The plan the kernel is generated from: the searched plan, which make_plan validates
    (validating it a second time here took about 2 of adamk-gen's 17 s for llama3-8b), refused
    where its buffers do not fit the GPU's memory (search.device_memory)."""
    try:
        plan = make_plan(model, deploy)
        check_fits_device(plan)
        return plan
    except PlanError as e:
        raise EmitError(f"no valid plan for {model.name} on {deploy.gpu.name} batch {deploy.batch}: "
                        f"{_one_line(str(e))}") from None


def plan_json_text(plan: Plan) -> str:
    """plan.json: the plan and the memory layout of its buffers (what adamk_plan_json() returns)."""
    doc = {"plan": plan.to_json(), "layout": make_layout(plan).to_json()}
    text = json.dumps(doc, indent=1, ensure_ascii=True, allow_nan=False)
    # Arrays of scalars (a schedule run, a shape) on one line each. Raw newlines are only ever
    # structural whitespace in JSON (strings escape them), so this cannot change the value.
    return re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\n\s*", " ", m.group(1)).strip() + "]", text) + "\n"


def write_sources(plan: Plan, out_dir: Path, log: Log) -> Source:
    """Render the plan and write plan.json and the sources into out_dir."""
    source = render(plan)
    write_atomic(out_dir / "plan.json", plan_json_text(plan))
    for name in sorted(source.files):
        write_atomic(out_dir / name, source.files[name])
    log(f"wrote plan.json and {', '.join(sorted(source.files))} to {out_dir}")
    _remove_stale(plan, out_dir, source, log)
    return source


def _remove_stale(plan: Plan, out_dir: Path, source: Source, log: Log) -> None:
    """Files of this (model, GPU, batch) named with a plan hash (adamk_<model>_<gpu>_bs<B>_<hash>.*),
    as ada_mk named them before file names became stable: the files just written replace them."""
    pattern = re.compile(r"(lib)?" + re.escape(plan.file_stem) + r"_[0-9a-f]{10}(_debug)?"
                         r"(\.cu|\.schedule\.inc|_host\.cu|\.h|\.fatbin|\.so)$")
    for p in sorted(out_dir.iterdir()):
        if pattern.fullmatch(p.name) and p.is_file():
            p.unlink()
            log(f"removed {p.name} (named by an earlier plan)")


def nvcc_path() -> str:
    """nvcc on PATH, else the toolkit's ($CUDA_HOME, /usr/local/cuda); "nvcc" when none is found."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return "nvcc"


def cached_build(source: Source, archs: list[str], out_dir: Path, log: Log, *,
                 hint: str = "or pass --no-build to stop after the source") -> Artifacts:
    """nvcc (or the build cache) -> fatbin and lib<name>.so in the cache. A failure is EmitError;
    nvcc's full output goes to out_dir/nvcc.log. `hint` follows a missing nvcc or CUTLASS."""
    log(f"compiling {source.name} for {', '.join(archs)}")
    try:
        return build(source, archs, library=True, nvcc=nvcc_path(), log=log)
    except BuildError as e:
        text = str(e)
        if "not found" in text.splitlines()[0]:
            raise EmitError(f"{_one_line(text)} ({hint})") from None
        log_path = write_atomic(out_dir / BUILD_LOG, text + "\n")
        raise EmitError(f"{_first_error(text)} (full output in {log_path})") from None


def compile_into(source: Source, archs: list[str], out_dir: Path, log: Log) -> Artifacts:
    """nvcc (or the build cache) -> fatbin and lib<name>.so, copied next to the sources."""
    art = cached_build(source, archs, out_dir, log)
    for p in (art.fatbin, art.library):
        if p is not None:
            write_atomic(out_dir / p.name, p.read_bytes())
    stale_log = out_dir / BUILD_LOG
    if stale_log.exists():
        stale_log.unlink()
    names = [p.name for p in (art.fatbin, art.library) if p is not None]
    log(f"wrote {', '.join(names)} to {out_dir} (build cache {art.directory})")
    return art


def explain_text(plan: Plan, out_dir: Path, log: Log, profile: Path | None = None) -> str:
    """What the plan decided: ada_mk.search.explain's report when it is installed (it also writes
    explain.txt, trace.json and gantt.png into out_dir), else a short summary of tilings and
    shared memory. profile: a profile.npz of this kernel, whose measured times the report adds
    (ada_mk.search.profile.ProfileError when it is another kernel's)."""
    try:
        from ..search.explain import explain
    except ModuleNotFoundError as e:
        if e.name != "ada_mk.search.explain":
            raise
        return plan_summary(plan)
    extra = {} if profile is None else {"profile": profile}
    try:
        return explain(plan, out_dir, **extra)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("matplotlib"):
            raise
        log("matplotlib is not installed: no gantt.png")
        return explain(plan, out_dir, png=False, **extra)


def plan_summary(plan: Plan) -> str:
    """Tiling of each linear stage, attention splits and the shared-memory budget."""
    gpu = plan.deploy.gpu
    lines = [f"plan {plan.plan_hash} ({plan.strategy}): {plan.model.name} on {gpu.name} ({gpu.arch}, "
             f"{plan.sms} SMs), batch {plan.batch}",
             f"{'stage':<8} {'N':>7} {'K':>6} {'rows':>5} {'ksplit':>6} {'tiles':>6} {'tasks':>6} {'KB/task':>8}"]
    for kind, t in plan.tilings.items():
        lines.append(f"{kind:<8} {t.n:>7} {t.k:>6} {t.rows:>5} {t.ksplit:>6} {t.tiles:>6} {t.tasks:>6} "
                     f"{t.rows * t.kc * 2 / 1024:>8.1f}")
    lines.append(f"attention: {plan.attn_splits} sequence splits per (sequence, K/V head), "
                 f"{plan.tasks_of('attn')} tasks per layer")
    lines.append(f"shared memory: {plan.smem_bytes} of {gpu.smem_per_block} bytes per block "
                 f"(stream ring {plan.stages} x {plan.stage_bytes} B)")
    for name, off in plan.smem_layout().items():
        lines.append(f"  {name:<11} {off:>7}")
    return "\n".join(lines) + "\n"


def emit(model: ModelConfig, deploy: DeployConfig, graph, out_dir: Path, log: Log, *,
         build_kernel: bool = True, archs: Iterable[str] = (),
         explain: Callable[[str], None] | None = None, profile: Path | None = None,
         plan: Plan | None = None) -> None:
    """Plan, render and (unless build_kernel is False) compile the kernel into out_dir.

    archs: architectures beyond the target GPU's own to put in the fatbin and library.
    explain: called with the plan's explanation text (the CLI prints it to stdout).
    profile: with explain, a profile.npz of this kernel to set measured times beside the predicted.
    plan: a plan already made and validated for (model, deploy), such as the one adamk-tune
    measured fastest, instead of the search's (plan_for).
    """
    out_dir = Path(out_dir)
    all_archs = target_archs(deploy, archs)  # bad --arch values fail before anything is written
    if plan is None:
        plan = plan_for(model, deploy)
    log(f"plan {plan.plan_hash} ({plan.strategy}): {plan.sms} blocks, {len(plan.all_tasks())} tasks, "
        f"{plan.smem_bytes} B shared memory of {deploy.gpu.smem_per_block}")
    source = write_sources(plan, out_dir, log)
    if explain is not None:
        explain(explain_text(plan, out_dir, log, profile))
    if build_kernel:
        compile_into(source, all_archs, out_dir, log)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _first_error(text: str) -> str:
    """The first line of nvcc's output that names an error, else the first line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines[1:]:
        if re.search(r"\berror\b", ln, re.IGNORECASE):
            return f"{lines[0].rstrip(':')}: {ln}"
    return lines[0] if lines else "nvcc failed"
