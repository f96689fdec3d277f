"""Cost constants of one card fitted to measured decode steps (`adamk-tune --calibrate`).

Input: profiles of instrumented builds (benchmarks/profile_step.py writes profile.npz with the
plan's recipe: config, GPU, batch, context and the cost constants the search used), all taken on
one card. Each profile's plan is rebuilt from its recipe and must be the profiled kernel.

The fit, in two steps:

  1. Direct readings of the profile, task by task:
     - sync_latency_s: a task's "inputs ready" minus the moment its inputs were complete (the
       last end among the producers of every counter it waits for), median over the tasks that
       were waiting when their inputs completed: the counter's trip and the wait's exit.
     - stage_fixed_s: a linear task's staging (input staged minus inputs ready) less its bytes
       over the L2 rate, median over the tasks that staged.
  2. The constants that set the streaming and the tasks' own times (stream_efficiency,
     task_overhead_s, attn_fixed_s, attn_iter_s) by a Nelder-Mead search on the simulated step
     (ada_mk.search.cost.simulate) against the measured one: the squared error of every task's end
     and of the step's span, relative to the span. Attention's fixed and per-position parts
     separate only with profiles at more than one context.

The result is a CostConstants with `source` naming the card, date and profiles; `save_calibration`
writes it to ada_mk/search/calibration/<GPU>.json, which `constants_for` then uses for that GPU
in place of the built-in constants (ada_mk/search/cost.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ConfigError, load_config
from . import cost as _cost
from .cost import US, CostConstants, CostModel, simulate
from .dag import Dag
from .errors import CalibrationError
from .plan import LINEAR_KINDS, Plan
from .planner import make_plan
from .profile import Measured, ProfileError, load_profile, read_profile_meta

# The constants step 2 fits, each within [lo, hi] times its starting value.
FITTED = ("stream_efficiency", "task_overhead_s", "attn_fixed_s", "attn_iter_s")
BOUNDS = (0.25, 4.0)


@dataclass
class ProfiledStep:
    """One measured step and the plan it ran: its context (positions in the KV cache) and the
    card it ran on."""

    plan: Plan
    measured: Measured
    context: int
    card: str = ""
    label: str = ""


RECIPE = ("config", "gpu", "batch", "max_context", "weights", "weights_group", "strategy", "context", "constants")


def profiled_step(path: str | os.PathLike) -> ProfiledStep:
    """A profile.npz with the plan it was taken from, rebuilt from the recipe in its meta
    (ada_mk.search.profile.profile_meta): the same config, deployment and cost constants give the
    same plan, which must be the profiled kernel."""
    try:
        _, meta = read_profile_meta(path)
    except ProfileError as e:
        raise CalibrationError(str(e)) from None
    missing = [k for k in RECIPE if k not in meta]
    if missing:
        raise CalibrationError(f"{path}: the profile lacks its plan's recipe ({', '.join(missing)}):"
                               " take it with benchmarks/profile_step.py")
    if meta["strategy"] != "search":
        raise CalibrationError(f"{path}: a {meta['strategy']!r} plan; calibrate from the search's plans")
    try:
        m, d = load_config(meta["config"], gpu=meta["gpu"], batch=meta["batch"], max_context=meta["max_context"],
                           weights=meta["weights"], weights_group=meta["weights_group"])
        plan = make_plan(m, d, "search", CostConstants(**meta["constants"]))
        measured = load_profile(path, plan)
    except (ConfigError, ProfileError, TypeError) as e:
        raise CalibrationError(f"{path}: {' '.join(str(e).split())}") from None
    label = f"{m.name} bs{d.batch}{'' if d.weights == 'bf16' else ' ' + d.weights} ctx{meta['context']}"
    return ProfiledStep(plan, measured, int(meta["context"]), meta.get("card", ""), label)


def inputs_complete_us(dag: Dag, step: ProfiledStep) -> dict:
    """Task -> the measured moment its inputs were complete (us; absent for tasks that wait for
    nothing): the last end among the producers of every counter the task waits for."""
    ends = step.measured.times
    out = {}
    for t in step.measured:
        last = None
        for stage, layer, first, count, _ in dag.deps_of(t.kind, t.layer, t.index):
            for counter in range(first, first + count):
                for p in dag.producers(stage, layer, counter):
                    e = ends[p][3]
                    last = e if last is None or e > last else last
        if last is not None:
            out[t] = last
    return out


def sync_readings_us(step: ProfiledStep) -> list[float]:
    """Inputs ready minus inputs complete, for the tasks that waited for their inputs."""
    dag = Dag(step.plan, step.context)
    out = []
    for t, done in inputs_complete_us(dag, step).items():
        wait, ready, _, _ = step.measured[t]
        if wait < done <= ready:
            out.append(ready - done)
    return out


def staging_readings_us(step: ProfiledStep, l2_bw_per_sm: float) -> list[float]:
    """Staging time less bytes over the L2 rate, for the linear tasks that staged their input
    (the previous task on the SM did not stage the same chunk)."""
    plan, m = step.plan, step.measured
    dag = Dag(plan, step.context)
    out = []
    for sm in range(plan.sms):
        prev = None
        for t in plan.sm_tasks(sm):
            if t.kind not in LINEAR_KINDS:
                prev = None
                continue
            ks = plan.tilings[t.kind].ksplit
            key = (t.kind, t.layer, t.index % ks)
            if key != prev:
                _, ready, staged, _ = m[t]
                out.append(staged - ready - dag.staging_bytes(t.kind, t.layer) / l2_bw_per_sm / US)
            prev = key
    return out


def step_error(step: ProfiledStep, c: CostConstants) -> float:
    """Squared error of the simulated step against the measured one: every task's end and the
    step's span, relative to the measured span (mean over the tasks, plus the span's)."""
    sim = simulate(step.plan, CostModel(step.plan, c, step.context))
    span, meas = step.measured.makespan_us, step.measured.times
    err = sum((e / US - meas[t][3]) ** 2 for t, e in zip(sim.tasks, sim.end)) / (len(sim.tasks) * span ** 2)
    return err + (sim.makespan / US / span - 1.0) ** 2


def predicted_vs_measured(step: ProfiledStep, c: CostConstants) -> tuple[float, float]:
    """(predicted, measured) span of the step in us (the profile's span has no launch)."""
    return simulate(step.plan, CostModel(step.plan, c, step.context)).makespan / US, step.measured.makespan_us


def _nelder_mead(err: Callable[[CostConstants], float], c: CostConstants, names: tuple[str, ...],
                 evals: int = 160) -> CostConstants:
    """Nelder-Mead over the logarithms of `names` (the constants trade against each other along
    ridges, where a search one constant at a time stalls), each held within BOUNDS of its
    starting value."""
    x0 = np.log([getattr(c, n) for n in names])
    lo, hi = x0 + np.log(BOUNDS[0]), x0 + np.log(BOUNDS[1])

    def at(x):
        return dataclasses.replace(c, **{n: float(v) for n, v in zip(names, np.exp(np.clip(x, lo, hi)))})

    def f(x):
        return err(at(x))

    simplex = [x0] + [x0 + np.eye(len(names))[i] * np.log(1.5) for i in range(len(names))]
    vals = [f(x) for x in simplex]
    n = len(simplex) - 1
    used = len(simplex)
    while used < evals:
        order = np.argsort(vals)
        simplex, vals = [simplex[i] for i in order], [vals[i] for i in order]
        centroid = np.mean(simplex[:-1], axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        used += 1
        if fr < vals[0]:
            xe = centroid + 2 * (centroid - simplex[-1])
            fe = f(xe)
            used += 1
            simplex[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[n - 1]:
            simplex[-1], vals[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            used += 1
            if fc < vals[-1]:
                simplex[-1], vals[-1] = xc, fc
            else:  # shrink towards the best
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                vals = [vals[0]] + [f(x) for x in simplex[1:]]
                used += n
    return at(simplex[int(np.argmin(vals))])


def fit_constants(steps: list[ProfiledStep], base: CostConstants, *, date: str = "", log=None) -> CostConstants:
    """The constants of `base` fitted to the measured steps (all of one card): see the module
    docstring. `log` receives one line per stage of the fit."""
    if not steps:
        raise CalibrationError("no profiles to fit")
    cards = {s.card for s in steps if s.card}
    if len(cards) > 1:
        raise CalibrationError(f"profiles of several cards ({', '.join(sorted(cards))}): calibrate one card at a time")
    say = log or (lambda _: None)
    syncs = [r for s in steps for r in sync_readings_us(s)]
    if not syncs:
        raise CalibrationError("no task in the profiles waited for its inputs: no sync latency to read")
    c = dataclasses.replace(base, sync_latency_s=statistics.median(syncs) * US)
    stagings = [r for s in steps for r in staging_readings_us(s, c.l2_bw_per_sm)]
    if stagings:
        c = dataclasses.replace(c, stage_fixed_s=max(0.0, statistics.median(stagings)) * US)
    say(f"read: sync {c.sync_latency_s / US:.2f} us (median of {len(syncs)} waits), staging fixed part "
        f"{c.stage_fixed_s / US:.2f} us (median of {len(stagings)} stagings)")
    c = _nelder_mead(lambda k: sum(step_error(s, k) for s in steps), c, FITTED)
    say("fitted: " + ", ".join(f"{n} {getattr(c, n) / (1 if n == 'stream_efficiency' else US):.3g}"
                               + ("" if n == "stream_efficiency" else " us") for n in FITTED))
    card = next(iter(cards), base.gpu)
    names = ", ".join(s.label for s in steps if s.label)
    return dataclasses.replace(c, source=f"fitted to {len(steps)} profiled steps on {card}"
                               f"{' ' + date if date else ''}{' (' + names + ')' if names else ''}")


def calibration_path(gpu: str) -> Path:
    """Where constants_for looks for `gpu`'s fitted constants."""
    return _cost.CALIBRATION_DIR / f"{gpu}.json"


def save_calibration(c: CostConstants, steps: list[ProfiledStep], path: Path, *, date: str = "",
                     commit: str = "") -> None:
    """Write the fitted constants with their provenance and the fit's predicted vs measured spans
    (temporary file, then rename)."""
    doc = {
        "gpu": c.gpu,
        "card": next((s.card for s in steps if s.card), ""),
        "date": date,
        "commit": commit,
        "constants": dataclasses.asdict(c),
        "steps": [{"label": s.label, "kernel": s.plan.kernel_name, "context": s.context,
                   "predicted_us": round(p, 2), "measured_us": round(m, 2)}
                  for s in steps for p, m in [predicted_vs_measured(s, c)]],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


__all__ = ["CalibrationError", "ProfiledStep", "profiled_step", "fit_constants", "calibration_path",
           "save_calibration", "sync_readings_us", "staging_readings_us", "step_error",
           "predicted_vs_measured", "inputs_complete_us"]
