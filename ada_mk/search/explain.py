"""`adamk-gen --explain`: what the plan decided and what the cost model predicts for it.

explain(plan, out_dir) writes into out_dir:
  explain.txt   per stage the tiles, K-split, shared memory and predicted time; the critical path;
                peak shared memory with and without K-split
  gantt.png     the per-SM schedule (matplotlib, imported only here)
  trace.json    a Chrome / Perfetto trace (chrome://tracing, ui.perfetto.dev): one process per SM,
                each task an "X" event, waits on a second track
and returns the text of explain.txt.

With profile= (a profile.npz from an instrumented build, see ada_mk.search.profile, or its Measured)
the report adds per stage the predicted and measured busy SM-time and the step makespan predicted
vs measured; trace.json gets a second group of processes, "measured SM <n>" (pid MEASURED_PID + SM,
the same thread ids: tasks on 0, waits on 1), and gantt_measured.png is written beside gantt.png.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .cost import CostModel, SimResult, simulate
from .dag import Dag
from .errors import PlanError
from .ksplit_claim import ksplit_claim
from .plan import LINEAR_KINDS, Plan
from .chain import chain_lines
from .profile import Measured, ProfileError, load_profile
from .smem import describe, peak_smem, smem_report

KIND_COLORS = {"qkv": "#4e79a7", "attn": "#f28e2b", "o": "#e15759", "gate_up": "#76b7b2", "down": "#59a14f",
               "lm_head": "#edc948", "argmax": "#b07aa1"}
KINDS = ("qkv", "attn", "o", "gate_up", "down", "lm_head", "argmax")
MEASURED_PID = 1000  # trace pid of "measured SM n" is MEASURED_PID + n


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f} us"


def _pct(pred: float, meas: float) -> str:
    return f"{100 * (pred / meas - 1):+.1f}%" if meas > 0 else "n/a"


def compare_lines(sim: SimResult, measured: Measured) -> list[str]:
    """Per stage predicted vs measured busy SM-time, and the step makespan (the error is the
    prediction's, relative to the measurement)."""
    pb = sim.per_kind_time()
    mb, mw = measured.per_kind_busy_us(), measured.per_kind_wait_us()
    lines = [f"predicted vs measured (profile of {measured.kernel_name}, {len(measured)} tasks;"
             f" busy = inputs ready to end, summed over SMs):",
             f"  {'stage':8s} {'predicted':>14s} {'measured':>14s} {'error':>8s} {'measured wait':>14s}"]
    for kind in KINDS:
        if kind in mb or kind in pb:
            p, m = pb.get(kind, 0.0) * 1e6, mb.get(kind, 0.0)
            lines.append(f"  {kind:8s} {p:11,.1f} us {m:11,.1f} us {_pct(p, m):>8s} {mw.get(kind, 0.0):11,.1f} us")
    p, m = sim.makespan * 1e6, measured.makespan_us
    lines.append(f"makespan predicted vs measured: {p:,.1f} us vs {m:,.1f} us ({_pct(p, m)})"
                 f"  [predicted step with launch {sim.predicted_s * 1e6:,.1f} us]")
    return lines


def weights_text(plan: Plan) -> str:
    """The format the plan's linear stages stream their weights in, in words (deploy.weights)."""
    fmt, group = plan.weights, plan.weights_group
    if fmt == "bf16":
        return "bf16"
    if fmt == "int4":
        return f"int4 (4-bit codes, a bf16 scale and offset per {group} columns of a row; the embedding stays bf16)"
    code = {"fp8": "FP8 E4M3 codes", "int8": "int8 codes"}[fmt]
    scales = f"a float32 scale per {group} columns of a row" if group else "a float32 scale per row"
    return f"{fmt} ({code}, {scales}; the embedding stays bf16)"


def feature_lines(plan: Plan) -> list[str]:
    """The plan's kernel features (its fields that switch the kernel's code paths), each with what
    it does; ada_mk/search/kernel_rules.py decides them."""
    m, tiled = plan.model, sorted({t.tiled for t in plan.tilings.values()})
    positions, buffers = plan.kv_pieces
    what = {
        "batched": "every warp multiplies a chunk by all sequences (tensor-core MMA)" if plan.batched
        else "each row of a chunk is reduced by its own warps (one sequence)",
        "bulk_ring": "bulk copies (TMA) fill the stream ring" if plan.bulk_ring else "cp.async fills the stream ring",
        "kv_ring": "attention's K/V rows come through the stream ring" if plan.kv_ring
        else "attention loads its own K/V rows",
        "kv_ring_positions": f"positions of K and V rows ({m.head_dim} dimensions) a ring slot holds"
        if plan.kv_ring else "(no K/V rows in the ring)",
        "kv_ring_slots": "ring slots an attention task takes" if plan.kv_ring else "(no K/V rows in the ring)",
        "kv_pieces": f"attention copies K/V rows to shared memory: {buffers} buffers of {positions} positions"
        if buffers else "no K/V pieces in shared memory",
        "attn_polled": "the last split of a group polls the others' partials" if plan.attn_polled
        else "the last split to finish (an atomic count) combines the partials",
    }
    lines = ["kernel features (plan fields, decided by ada_mk/search/kernel_rules.py):"]
    for name, value in plan.kernel_features.items():
        lines.append(f"  {name:18s} {str(value):8s} {what[name]}")
    lines.append(f"  {'tiled (tilings)':18s} {','.join(map(str, tiled)):8s} "
                 + ("weights packed chunk by chunk, as the ring's slots" if tiled == [True] else "weights row-major"))
    return lines


def report(plan: Plan, sim: SimResult | None = None, *, claim=None, measured: Measured | None = None) -> str:
    sim = sim or simulate(plan)
    m, d = plan.model, plan.deploy
    dag = Dag(plan)
    totals = dag.totals()
    L = m.num_hidden_layers
    lines = [f"plan {plan.kernel_name} ({plan.strategy}): {m.name} on {d.gpu.name} ({d.gpu.sms} SMs,"
             f" {d.gpu.read_bandwidth / 1e9:,.0f} GB/s read), batch {plan.batch}, context {dag.context}",
             f"predicted step: {_us(sim.predicted_s)} (schedule {_us(sim.makespan)} + launch {_us(sim.launch_s)})"]
    wbytes = sum(v["weight_bytes"] for v in totals.values())
    floor = wbytes / d.gpu.read_bandwidth
    lines.append(f"weights: {weights_text(plan)}")
    lines.append(f"weights read: {wbytes / 1e9:.3f} GB; floor bytes / read bandwidth {_us(floor)}"
                 f" ({100 * floor / sim.predicted_s:.0f}% of the prediction)")
    lines.append(f"cost model: {sim.constants.source}")
    lines.append("")
    lines += feature_lines(plan)
    lines.append("")
    lines.append("per stage (times: predicted busy SM-time summed over the step, and the mean span of one layer):")
    spans = sim.stage_spans()
    busy = sim.per_kind_time()
    rep = smem_report(plan)
    lines.append(f"  {'stage':8s} {'rows':>5s} {'ksplit':>6s} {'wpr':>3s} {'tasks/layer':>11s} {'chunk B':>8s}"
                 f" {'x B':>6s} {'SM-time':>12s} {'layer span':>12s}")
    for kind in KINDS:
        n = plan.tasks_of(kind)
        per = [spans[(kind, l)] for l in range(L if kind not in ("lm_head", "argmax") else 1) if (kind, l) in spans]
        span = sum(e - s for s, e in per) / max(1, len(per))
        if kind in LINEAR_KINDS:
            t, ss = plan.tilings[kind], rep.per_stage[kind]
            lines.append(f"  {kind:8s} {t.rows:5d} {t.ksplit:6d} {t.warps_per_row:3d} {n:11d} {ss.chunk_bytes:8d}"
                         f" {ss.x:6d} {_us(busy.get(kind, 0.0)):>12s} {_us(span):>12s}")
        else:
            extra = f"splits {plan.attn_splits}" if kind == "attn" else ""
            lines.append(f"  {kind:8s} {'':5s} {'':6s} {'':3s} {n:11d} {'':8s} {'':6s}"
                         f" {_us(busy.get(kind, 0.0)):>12s} {_us(span):>12s}  {extra}")
    lines.append("")
    if measured is not None:
        lines += compare_lines(sim, measured)
        lines.append("")
        lines += chain_lines(measured)
        lines.append("")
    lines += describe(rep)
    same_unsplit = peak_smem(plan, ksplit=False)
    lines.append(f"peak shared memory with K-split: {plan.smem_bytes} B; the same plan unsplit: {same_unsplit} B"
                 f" ({100 * (1 - plan.smem_bytes / same_unsplit):.0f}% saved)")
    if isinstance(claim, str):
        lines.append(claim)
    elif claim is not None:
        lines.append(claim.describe())
        lines.append(f"  (this plan, the fastest found: {plan.smem_bytes} B, predicted {_us(sim.predicted_s)},"
                     f" {100 * (sim.predicted_s / claim.unsplit_s - 1):+.1f}% against the best unsplit plan)")
    lines.append("")
    path = sim.critical_path()
    lines.append(f"critical path ({len(path)} tasks), grouped by stage:")
    groups: list = []
    for i in path:
        t = sim.tasks[i]
        key = (t.kind, t.layer)
        if groups and groups[-1][0] == key:
            groups[-1][2] = sim.end[i]
            groups[-1][3] += 1
        else:
            groups.append([key, sim.start[i], sim.end[i], 1, sim.sm[i]])
    shown = groups if len(groups) <= 24 else groups[:12] + [None] + groups[-12:]
    for g in shown:
        if g is None:
            lines.append(f"  ... {len(groups) - 24} more groups ...")
            continue
        (kind, layer), s, e, n, sm = g
        lines.append(f"  {kind:8s} layer {layer:3d}: {n:3d} task(s) {_us(s):>14s} -> {_us(e):>14s} (from SM {sm})")
    lines.append("")
    runs = sum(len(r) for r in plan.schedule)
    lines.append(f"schedule: {len(sim.tasks)} tasks in {runs} runs over {plan.sms} SMs")
    return "\n".join(lines) + "\n"


def trace_events(sim: SimResult, measured: Measured | None = None) -> dict:
    ev = []
    label = "predicted SM" if measured is not None else "SM"
    for sm in sorted(set(sim.sm)):
        ev.append({"name": "process_name", "ph": "M", "pid": sm, "args": {"name": f"{label} {sm}"}})
        if measured is not None:
            ev.append({"name": "process_sort_index", "ph": "M", "pid": sm, "args": {"sort_index": MEASURED_PID + sm}})
        ev.append({"name": "thread_name", "ph": "M", "pid": sm, "tid": 0, "args": {"name": "tasks"}})
        ev.append({"name": "thread_name", "ph": "M", "pid": sm, "tid": 1, "args": {"name": "waits"}})
    for t, sm, w, s, e in zip(sim.tasks, sim.sm, sim.wait, sim.start, sim.end):
        ev.append({"name": f"{t.kind} L{t.layer} #{t.index}", "cat": t.kind, "ph": "X", "pid": sm, "tid": 0,
                   "ts": round(s * 1e6, 4), "dur": round((e - s) * 1e6, 4),
                   "args": {"kind": t.kind, "layer": t.layer, "index": t.index}})
        if s > w:
            ev.append({"name": "wait", "cat": "wait", "ph": "X", "pid": sm, "tid": 1,
                       "ts": round(w * 1e6, 4), "dur": round((s - w) * 1e6, 4)})
    other = {"predicted_us": sim.predicted_s * 1e6, "source": "ada_mk cost model (predicted)"}
    if measured is not None:
        ev += measured_events(measured)
        other.update(measured_us=measured.makespan_us, predicted_makespan_us=sim.makespan * 1e6,
                     measured_source=f"profile of {measured.kernel_name} (pids {MEASURED_PID}+SM)")
    return {"traceEvents": ev, "displayTimeUnit": "ns", "otherData": other}


def measured_events(measured: Measured) -> list[dict]:
    """The measured step as trace events: process MEASURED_PID + SM, tasks on thread 0 (inputs
    ready to end), waits on thread 1 (wait start to inputs ready)."""
    ev = []
    for sm in sorted(set(measured.sm.values())):
        pid = MEASURED_PID + sm
        ev.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"measured SM {sm}"}})
        ev.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": sm}})
        ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "tasks"}})
        ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": "waits"}})
    for t, (w, r, st, e) in measured.times.items():
        pid = MEASURED_PID + measured.sm[t]
        ev.append({"name": f"{t.kind} L{t.layer} #{t.index}", "cat": t.kind, "ph": "X", "pid": pid, "tid": 0,
                   "ts": round(r, 4), "dur": round(e - r, 4),
                   "args": {"kind": t.kind, "layer": t.layer, "index": t.index, "staged_us": round(st - r, 4)}})
        if r > w:
            ev.append({"name": "wait", "cat": "wait", "ph": "X", "pid": pid, "tid": 1,
                       "ts": round(w, 4), "dur": round(r - w, 4)})
    return ev


def gantt(sim: SimResult, path: str | os.PathLike, title: str = "") -> None:
    bars = [(t.kind, sm, s * 1e6, e * 1e6) for t, sm, s, e in zip(sim.tasks, sim.sm, sim.start, sim.end)]
    _gantt(bars, sim.plan.sms, path, "time (us, predicted)",
           title or f"{sim.plan.model.name} on {sim.plan.deploy.gpu.name}: predicted {sim.predicted_s * 1e6:,.1f} us")


def gantt_measured(sim: SimResult, measured: Measured, path: str | os.PathLike) -> None:
    """The measured schedule, drawn like gantt.png (inputs ready to end of each task)."""
    bars = [(t.kind, measured.sm[t], r, e) for t, (_, r, _, e) in measured.times.items()]
    p = sim.plan
    _gantt(bars, p.sms, path, "time (us, measured)",
           f"{p.model.name} on {p.deploy.gpu.name}: measured {measured.makespan_us:,.1f} us"
           f" (predicted schedule {sim.makespan * 1e6:,.1f} us)")


def _gantt(rows, S: int, path, xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(16, max(4, S * 0.06)), dpi=110)
    bars: dict = {}
    for kind, sm, s, e in rows:
        bars.setdefault((kind, sm), []).append((s, e - s))
    for (kind, sm), xs in bars.items():
        ax.broken_barh(xs, (sm - 0.4, 0.8), facecolors=KIND_COLORS.get(kind, "grey"), linewidth=0)
    ax.set_ylim(-1, S)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SM")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLORS.items()], loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def explain(plan: Plan, out_dir: str | os.PathLike, *, compare_unsplit: bool = True, png: bool = True,
            profile: str | os.PathLike | Measured | None = None) -> str:
    """Write explain.txt, gantt.png and trace.json into out_dir; return the report text.

    profile: a profile.npz of this plan's kernel (or a Measured): adds the measured times
    (ada_mk.search.profile.ProfileError, one line, when it is another kernel's)."""
    measured = profile if isinstance(profile, Measured) or profile is None else load_profile(profile, plan)
    if measured is not None and measured.kernel_name != plan.kernel_name:
        raise ProfileError(f"profile of kernel {measured.kernel_name}, but the plan is {plan.kernel_name}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = simulate(plan, CostModel(plan))
    claim = None
    if compare_unsplit:
        try:
            claim = ksplit_claim(plan.model, plan.deploy)
        except PlanError as e:  # no unsplit plan fits any GPU (Llama-3-8B at batch 8): nothing to compare
            claim = f"best plan without K-split: none ({e})"
    text = report(plan, sim, claim=claim, measured=measured)
    (out / "explain.txt").write_text(text)
    (out / "trace.json").write_text(json.dumps(trace_events(sim, measured)))
    if png:
        gantt(sim, out / "gantt.png")
        if measured is not None:
            gantt_measured(sim, measured, out / "gantt_measured.png")
    return text


__all__ = ["explain", "report", "feature_lines", "trace_events", "gantt", "gantt_measured", "compare_lines", "MEASURED_PID"]
