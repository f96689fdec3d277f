"""The cost model: predicted time of every task of a plan, and of the whole decode step.

Each SM runs its task list in order. Two things happen on an SM at once:

  * the loader streams the weight chunks of its whole task list, in order, through the ring;
    it needs no dependency (weights never depend on activations), but it can run at most
    `stages - 1` chunks ahead of the chunk being multiplied;
  * the consumer takes the tasks one by one: it waits until the counters the task reads reach
    their targets (plus the signal -> acquire latency), stages the activation chunk (unless the
    previous task on the SM staged the same one), multiplies the task's chunks as they arrive,
    reduces, stores and signals.

With `bw` the SM's streaming rate, W a task's weight bytes and `pre` the part of them that fits
in the ring ahead of the consumer, per linear task:

    s   = max(end of previous task, ready + sync latency) + staging
    f   = max(f_prev + W / bw, s + (1 - pre) * W / bw)          (the loader finishes the task)
    end = max(s + compute, f + one chunk's compute) + task overhead

so weight loads overlap dependency waits up to the ring's depth. An SM streams at most
min(its share of the read bandwidth, bytes in flight / loaded DRAM latency) (Little's law: the
ring keeps `stages - 1` chunks in flight). Attention tasks read no weights (the loader streams
past them); they cost a fixed part plus the latency-bound loop over their positions.

The constants are fixed per GPU (COSTS): Hopper's are fitted to measurements on an H200
(_fitted_hopper), the other GPUs' are estimates, and CostConstants.source says which. A card's
profiles fitted by `adamk-tune --calibrate` (ada_mk/search/calibrate.py) go to
calibration/<GPU>.json beside this file, which then replaces that GPU's built-in constants. Nothing
recalibrates them at run time.
"""
from __future__ import annotations

import dataclasses
import json

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.gpus import GpuSpec
from .dag import Dag
from .errors import CalibrationError
from .plan import KIND_IDS, LINEAR_KINDS, Plan, Task

US = 1e-6


@dataclass(frozen=True)
class CostConstants:
    gpu: str
    sync_latency_s: float  # a counter bump (release) seen by a spinning consumer (acquire)
    task_overhead_s: float  # per task: cross-warp reduction, partial-sum stores, barrier, signal
    chunk_overhead_s: float  # per ring chunk: cp.async wait and __syncthreads
    stage_fixed_s: float  # staging an activation chunk: its barriers and first-load latency
    l2_bw_per_sm: float  # bytes/s one SM reads from L2 while staging
    mem_latency_s: float  # loaded DRAM latency (in-flight bytes / latency caps an SM's stream)
    alu_rate_per_sm: float  # fp32 instructions/s of one SM (lanes x boost clock)
    smem_bw_per_sm: float  # shared-memory bytes/s one SM's multiply achieves (see _est)
    attn_fixed_s: float  # attention task: RoPE, q/k/v loads, 3 block barriers, warp combine
    attn_iter_s: float  # one position per warp: K/V loads (latency bound), bookkeeping
    attn_head_s: float  # one position per warp per query head: dot product, shuffles, exp
    argmax_s: float  # the final argmax task
    launch_s: float  # kernel launch and block start, added once per step
    source: str = "estimate"
    # The fraction of its share of the card's read bandwidth that a task's weight stream achieves
    # inside the kernel (the ring alone streams at the full rate: benchmarks/microbench.cu).
    stream_efficiency: float = 0.75


def _est(gpu: str, *, sync: float, l2_tb_s: float, sms: int, lanes: int, clock: float, lat: float = 1.0) -> CostConstants:
    alu = lanes * clock
    return CostConstants(
        gpu=gpu,
        sync_latency_s=sync * US,
        task_overhead_s=0.5 * US,
        chunk_overhead_s=0.05 * US,
        stage_fixed_s=0.6 * US,
        l2_bw_per_sm=l2_tb_s * 1e12 / sms,
        mem_latency_s=lat * US,
        alu_rate_per_sm=alu,
        # Half the 32 banks x 4 bytes per clock: the rate the batched multiply achieves. See
        # docs/experiments.md, "Cost model: shared-memory rate of the batched multiply".
        smem_bw_per_sm=64 * clock,
        attn_fixed_s=2.0 * US,
        attn_iter_s=0.2 * US,
        attn_head_s=0.03 * US,
        argmax_s=1.5 * US,
        launch_s=4.0 * US,
        source=(f"estimate for {gpu} (not fitted to measurements): sync {sync} us, L2 {l2_tb_s} TB/s shared by"
                f" {sms} SMs, DRAM latency {lat} us under load, {alu:.3g} fp32 instr/s per SM"),
    )


def _fitted_hopper(gpu: str) -> CostConstants:
    """Hopper's constants, fitted to measurements on an H200: the counter release -> acquire
    latency (benchmarks/microbench.cu, pingpong), the per-task overhead, the input staging and the
    weight stream's share of the SM's bandwidth (a profile of an instrumented build,
    benchmarks/profile_step.py). The H100 takes the same ones (the same SM and L2). See
    docs/experiments.md, "Cost model: Hopper constants fitted to an H200"."""
    base = _est(gpu, sync=0.42, l2_tb_s=5.5, sms=132, lanes=128, clock=1.755e9)
    return dataclasses.replace(
        base, task_overhead_s=1.5 * US, stage_fixed_s=1.5 * US, stream_efficiency=0.75,
        source=f"fitted to an H200 (sync 0.42 us, task overhead 1.5 us, staging 1.5 us, "
               f"weight streams at 75% of the SM's bandwidth share); used for {gpu}")


# Hopper: fitted (above). The others: estimates -- latencies from public micro-benchmark papers
# of Ampere/Ada (order of magnitude), clocks and lane counts from the vendor whitepapers, the
# streaming efficiency assumed equal to Hopper's; no measurement on those cards backs them.
COSTS: dict[str, CostConstants] = {
    "H100": _fitted_hopper("H100"),
    "H200": _fitted_hopper("H200"),
    "A100": _est("A100", sync=1.2, l2_tb_s=4.0, sms=108, lanes=64, clock=1.41e9),
    "L20": _est("L20", sync=1.2, l2_tb_s=3.5, sms=92, lanes=128, clock=2.52e9),
    "L40S": _est("L40S", sync=1.2, l2_tb_s=4.5, sms=142, lanes=128, clock=2.52e9),
    "RTX4090": _est("RTX4090", sync=1.2, l2_tb_s=5.0, sms=128, lanes=128, clock=2.52e9),
}


# Constants fitted to one card's profiles (`adamk-tune --calibrate`, ada_mk/search/calibrate.py),
# one file per GPU: where one exists it replaces that GPU's entry of COSTS.
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"


def load_calibration(path: Path) -> CostConstants:
    """The constants a calibration file holds (CalibrationError naming the file if unreadable)."""
    try:
        values = json.loads(Path(path).read_text())["constants"]
        fields = {f.name for f in dataclasses.fields(CostConstants)}
        missing = fields - set(values) - {"source", "stream_efficiency"}  # the fields with defaults
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return CostConstants(**{k: v for k, v in values.items() if k in fields})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CalibrationError(f"{path}: not a calibration file ({' '.join(str(e).split())})") from None


def constants_for(gpu: GpuSpec) -> CostConstants:
    path = CALIBRATION_DIR / f"{gpu.name}.json"
    if path.exists():
        return load_calibration(path)
    c = COSTS.get(gpu.name)
    if c is not None:
        return c
    return _est(gpu.name, sync=1.2, l2_tb_s=4.0, sms=gpu.sms, lanes=128, clock=1.8e9)


def staged_key(kind: str, layer: int, idx: int, ksplit: int) -> int:
    """The kernel's key of a staged activation chunk (stage, layer, K-split)."""
    return KIND_IDS[kind] | layer << 8 | (idx % ksplit) << 20


class CostModel:
    """Per-kind timing parameters of one plan (its tilings, ring and attention splits)."""

    def __init__(self, plan: Plan, constants: CostConstants | None = None, context: int | None = None,
                 dag: Dag | None = None):
        self.plan = plan
        self.c = c = constants or constants_for(plan.deploy.gpu)
        self.dag = dag or Dag(plan, context)
        gpu, B, S = plan.deploy.gpu, plan.batch, plan.stages
        self.share = gpu.read_bandwidth / plan.sms * c.stream_efficiency
        self.kinds: dict[str, dict] = {}
        for kind in LINEAR_KINDS:
            t = plan.tilings[kind]
            chunk = t.chunk_bytes
            in_flight = max(1, S - 1) * chunk
            bw = min(self.share, in_flight / c.mem_latency_s)
            if plan.batched:  # shared-memory bound: the chunk written once, read once (elem_bytes a
                # weight), and the activations of its columns read once per chunk (batched multiply,
                # adamk/linear.cuh)
                per_chunk = (c.chunk_overhead_s
                             + (2 * t.elem_bytes * t.chunk_rows + 2 * B) * t.chunk_cols / c.smem_bw_per_sm)
            else:
                per_chunk = c.chunk_overhead_s + t.chunk_rows * t.kc * (1 + 2 * B) / c.alu_rate_per_sm
            overhead = c.task_overhead_s
            if kind in ("o", "down") and t.ksplit > 1:
                # the last split of a tile sums the splits' partials of the residual stream
                # (adamk/linear_stages.cuh, finish_stream_split): an arrival round trip and an L2 read
                overhead += c.sync_latency_s + c.stage_fixed_s + t.rows * B * t.ksplit * 4 / c.l2_bw_per_sm
            self.kinds[kind] = dict(
                overhead=overhead,
                bw=bw,
                compute=t.chunks * per_chunk,
                last=per_chunk,
                ksplit=t.ksplit,
                tiles=t.tiles,
                wt=t.rows_bytes(t.rows) / bw,
                wt_last=t.rows_bytes(t.n - (t.tiles - 1) * t.rows) / bw,
            )
        m = plan.model
        iters = -(-self.dag.kv_positions() // 8)
        attn_loop = iters * (c.attn_iter_s + m.group_size * c.attn_head_s)
        kv_time = self.dag.kv_bytes("attn") / self.share
        self.attn_time = (c.attn_fixed_s + self.dag.staging_bytes("attn", 1) / c.l2_bw_per_sm
                          + max(attn_loop, kv_time) + c.task_overhead_s)
        self.argmax_time = c.argmax_s + self.dag.staging_bytes("argmax", 0) / c.l2_bw_per_sm
        self._stage: dict = {}
        self._timing: dict = {}

    def stage_time(self, kind: str, layer: int) -> float:
        key = (kind, layer == 0)
        v = self._stage.get(key)
        if v is None:
            v = self.c.stage_fixed_s + self.dag.staging_bytes(kind, layer) / self.c.l2_bw_per_sm
            self._stage[key] = v
        return v

    def load_time(self, kind: str, idx: int) -> float:
        k = self.kinds[kind]
        return k["wt_last"] if idx // k["ksplit"] == k["tiles"] - 1 else k["wt"]

    @property
    def depth(self) -> int:
        """Chunks the loader may run ahead of the consumer: stages - 1."""
        return max(1, self.plan.stages - 1)

    def timing(self, kind: str, layer: int, idx: int) -> LinearTiming:
        """The timing of linear task `idx` of `kind` in `layer`: one per stage, first layer or
        not, and task size (only a stage's last tile can be smaller), made once per cost model."""
        k = self.kinds[kind]
        key = (kind, layer == 0, idx // k["ksplit"] == k["tiles"] - 1)
        tm = self._timing.get(key)
        if tm is None:
            tm = self._timing[key] = LinearTiming(self, kind, layer, self.load_time(kind, idx))
        return tm


class LinearTiming:
    """The cost model's formulas for one linear task, with everything that does not depend on the
    SM's state computed once (the search evaluates them for hundreds of thousands of tasks; the
    *_vec forms for every SM at once). `ready` includes the sync latency. `hist` holds, oldest first, when the consumer
    began each of the SM's last `depth` chunks: chunk j of this task may load only once chunk
    j - depth (counted over the SM's whole stream) has begun (the ring slot is free)."""

    __slots__ = ("chunks", "depth", "stage", "lead", "offsets", "rest", "compute", "last", "overhead", "span")

    def __init__(self, cost: CostModel, kind: str, layer: int, load: float):
        k = cost.kinds[kind]
        c, D = cost.plan.tilings[kind].chunks, cost.depth
        ct = load / c  # one chunk's load time
        m = min(c, D)  # chunks that can be in the ring before the task starts
        self.chunks, self.depth = c, D
        self.stage = cost.stage_time(kind, layer)
        self.lead = m * ct
        self.offsets = [(m - j) * ct for j in range(m)]  # chunk j's wait for the slot of hist[j]
        self.rest = (c - m) * ct  # the chunks loaded after the task starts (where c > depth)
        self.compute, self.last, self.overhead = k["compute"], k["last"], k["overhead"]
        self.span = range(max(0, c - D), c)  # its chunks that remain in the history

    def end(self, end_prev: float, f_prev: float, reuse: bool, ready: float, hist: list) -> tuple[float, float, float]:
        """(exec start, loader finish, end) on an SM whose previous task ended at `end_prev`,
        its loader at `f_prev`; `reuse`: the SM has the task's activation chunk staged."""
        s = max(end_prev, ready) + (0.0 if reuse else self.stage)
        a = f_prev + self.lead
        for h, o in zip(hist, self.offsets):
            v = h + o
            if v > a:
                a = v
        f = a if self.chunks <= self.depth else max(a, s) + self.rest
        return s, f, max(s + self.compute, f + self.last) + self.overhead

    def end_vec(self, end: np.ndarray, f: np.ndarray, reuse: np.ndarray, ready: float, hist: np.ndarray):
        """end() on every SM at once (arrays over SMs; hist is [SMs][depth]): the same float
        operations, elementwise."""
        s = np.maximum(end, ready) + np.where(reuse, 0.0, self.stage)
        m = len(self.offsets)
        a = np.maximum(f + self.lead, (hist[:, :m] + np.array(self.offsets)).max(axis=1))
        fn = a if self.chunks <= self.depth else np.maximum(a, s) + self.rest
        return s, fn, np.maximum(s + self.compute, fn + self.last) + self.overhead

    def hist_after(self, hist: list, s: float, end: float) -> list:
        """The SM's ring history after this task, which began executing at `s` and ended at
        `end`: its chunks begin evenly over its body. (A new list: rows are never changed in
        place.)"""
        c = self.chunks
        body = end - self.overhead - s
        new = [s + body * i / c for i in self.span]
        return new if c >= self.depth else [*hist[c:], *new]

    def hist_after_vec(self, hist: np.ndarray, s: np.ndarray, end: np.ndarray) -> np.ndarray:
        """hist_after on every SM at once, with the same float operations."""
        c = self.chunks
        body = end - self.overhead - s
        new = s[:, None] + body[:, None] * np.arange(self.span.start, c) / c
        return new if c >= self.depth else np.concatenate([hist[:, c:], new], axis=1)


# ---- simulation of a fixed schedule ----------------------------------------------------------

class Deadlock(RuntimeError):
    def __init__(self, msg: str, stuck: list):
        super().__init__(msg)
        self.stuck = stuck


class _Counters:
    """Counter states during a simulation: bumps so far, time of the last bump, last bumper."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.cnt: dict = {}
        self.time: dict = {}
        self.last: dict = {}
        self.done: dict = {}  # resolved dependency ranges -> (time, producer)
        self.short: dict = {}  # unresolved ones -> a counter found short of its target (checked first)

    def _arrays(self, stage: str, layer: int):
        key = (stage, layer)
        c = self.cnt.get(key)
        if c is None:
            p = self.plan
            n = p.tilings[stage].tiles if stage != "attn" else p.batch * p.model.num_key_value_heads
            c = self.cnt[key] = [0] * n
            self.time[key] = [0.0] * n
            self.last[key] = [None] * n
        return c, self.time[key], self.last[key]

    @staticmethod
    def bump(arrays: tuple, i: int, t: float, who) -> None:
        """Counter i of a stage (its _arrays) bumped at time t by `who`."""
        c, tm, last = arrays
        c[i] += 1
        if t >= tm[i]:
            tm[i] = t
            last[i] = who

    def ready(self, dep: tuple):
        """(time, producer) when every counter of the range reached its target; None if not yet."""
        r = self.done.get(dep)
        if r is not None:
            return r
        stage, layer, first, count, per = dep
        c, tm, last = self._arrays(stage, layer)
        j = self.short.get(dep)
        if j is not None and c[j] < per:  # still short
            return None
        seg = c[first:first + count]
        if len(seg) < count:
            return None
        low = min(seg)
        if low < per:
            self.short[dep] = first + seg.index(low)
            return None
        ts = tm[first:first + count]
        j = max(range(count), key=ts.__getitem__)
        r = self.done[dep] = (ts[j], last[first + j])
        return r


@dataclass
class SimResult:
    """Predicted timeline of one decode step (seconds from the kernel's start)."""

    plan: Plan
    tasks: list  # Task per record, in simulation order
    sm: list  # SM of each record
    wait: list  # when the SM reached the task (end of its previous task)
    start: list  # when it started executing it (its inputs ready)
    end: list
    pred: list  # the record index that bound its start (dependency or SM predecessor), or -1
    makespan: float
    launch_s: float
    constants: CostConstants
    index: dict = field(default_factory=dict)  # Task -> record

    @property
    def predicted_s(self) -> float:
        return self.makespan + self.launch_s

    def critical_path(self) -> list[int]:
        """Record indices from the first to the last task along the binding predecessors."""
        if not self.end:
            return []
        i = max(range(len(self.end)), key=self.end.__getitem__)
        path = []
        while i >= 0:
            path.append(i)
            i = self.pred[i]
        return path[::-1]

    def per_kind_time(self) -> dict[str, float]:
        """Busy SM-seconds per kind (start to end)."""
        out: dict[str, float] = {}
        for t, s, e in zip(self.tasks, self.start, self.end):
            out[t.kind] = out.get(t.kind, 0.0) + (e - s)
        return out

    def stage_spans(self) -> dict[tuple[str, int], tuple[float, float]]:
        """(kind, layer) -> (first start, last end)."""
        out: dict = {}
        for t, s, e in zip(self.tasks, self.start, self.end):
            k = (t.kind, t.layer)
            a = out.get(k)
            out[k] = (s, e) if a is None else (min(a[0], s), max(a[1], e))
        return out


def _wait(ctr: _Counters, deps: tuple, sync: float) -> tuple | None:
    """(ready time, the producer that set it) of a task with these dependencies, or None while
    some counter is short of its target."""
    ready, who = 0.0, None
    for d in deps:
        r = ctr.ready(d)
        if r is None:
            return None
        if r[0] + sync > ready:
            ready, who = r[0] + sync, r[1]
    return ready, who


class _SimStage:
    """What simulate needs of the tasks of one (kind, layer), looked up once."""

    __slots__ = ("dep_of", "deps", "waits", "per_step", "counters", "linear", "ksplit", "keys", "last_tile",
                 "timing", "timing_last", "time")

    def __init__(self, cost: CostModel, ctr: _Counters, kind: str, layer: int):
        tasks = cost.dag.stage_tasks(kind, layer)
        self.dep_of = tasks.dep_of
        # per dependency class: its deps_of, and its _wait once every counter is complete
        # (resolved counters never change: _Counters.ready)
        self.deps = {n: tuple((g, layer + dl, a, c, p) for (g, dl, a, c, p) in d) for n, d in tasks.deps.items()}
        self.waits: dict = {}
        self.per_step = tasks.per_step
        self.counters = ctr._arrays(kind, layer) if tasks.per_step else None
        self.linear = kind in LINEAR_KINDS
        if self.linear:
            k = cost.kinds[kind]
            self.ksplit, self.last_tile = k["ksplit"], k["tiles"] - 1
            self.keys = [staged_key(kind, layer, sp, self.ksplit) for sp in range(self.ksplit)]
            self.timing = cost.timing(kind, layer, 0)
            self.timing_last = cost.timing(kind, layer, self.last_tile * self.ksplit)
        else:
            self.time = cost.attn_time if kind == "attn" else cost.argmax_time


def simulate(plan: Plan, cost: CostModel | None = None, *, context: int | None = None,
             per_sm: list[list[Task]] | None = None) -> SimResult:
    """Run the plan's per-SM task lists against the dependency rule and the cost model.

    Raises Deadlock when some SM's next task can never become ready (a task waiting on one
    scheduled after it on the same SM, or a cycle across SMs)."""
    cost = cost or CostModel(plan, context=context)
    lists = per_sm if per_sm is not None else [plan.sm_tasks(s) for s in range(plan.sms)]
    S = len(lists)
    pos = [0] * S
    end = [0.0] * S
    f = [0.0] * S
    staged = [-1] * S
    last_rec = [-1] * S
    hist = [[0.0] * cost.depth for _ in range(S)]
    ctr = _Counters(plan)
    sync = cost.c.sync_latency_s
    res = SimResult(plan, [], [], [], [], [], [], 0.0, cost.c.launch_s, cost.c)
    rec_of: dict = {}
    stages: dict = {}  # (kind, layer) -> _SimStage
    progress = True
    while progress:
        progress = False
        for s in range(S):
            lst = lists[s]
            while pos[s] < len(lst):
                t = lst[pos[s]]
                kind, layer, idx = t.kind, t.layer, t.index
                g = stages.get((kind, layer))
                if g is None:
                    g = stages[(kind, layer)] = _SimStage(cost, ctr, kind, layer)
                n = g.dep_of[idx]
                w = g.waits.get(n)
                if w is None:
                    w = _wait(ctr, g.deps[n], sync)
                    if w is None:
                        break
                    g.waits[n] = w
                ready, who = w
                e0 = end[s]
                st = max(e0, ready)
                if g.linear:
                    key = g.keys[idx % g.ksplit]
                    tm = g.timing_last if idx // g.ksplit == g.last_tile else g.timing
                    x, f[s], e = tm.end(e0, f[s], staged[s] == key, ready, hist[s])  # x: after staging
                    hist[s] = tm.hist_after(hist[s], x, e)
                    staged[s] = key
                else:
                    e = st + g.time
                i = len(res.tasks)
                res.tasks.append(t)
                res.sm.append(s)
                res.wait.append(e0)
                res.start.append(st)
                res.end.append(e)
                res.pred.append(rec_of.get(who, -1) if (who is not None and ready > e0) else last_rec[s])
                rec_of[t] = i
                last_rec[s] = i
                end[s] = e
                if g.per_step:
                    _Counters.bump(g.counters, idx // g.per_step, e, t)
                pos[s] += 1
                progress = True
    stuck = [(s, lists[s][pos[s]]) for s in range(S) if pos[s] < len(lists[s])]
    if stuck:
        s, t = stuck[0]
        raise Deadlock(
            f"deadlock: {len(stuck)} SM(s) wait forever; SM {s} waits at task {t.kind}[{t.index}] of layer"
            f" {t.layer} (its inputs are produced later on the same SM or by a task that waits on it)",
            stuck)
    res.makespan = max(res.end) if res.end else 0.0
    res.index = rec_of
    return res


__all__ = ["CostConstants", "COSTS", "constants_for", "load_calibration", "CostModel", "SimResult", "simulate", "Deadlock",
           "staged_key", "np"]
