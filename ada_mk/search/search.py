"""The offline search: per-stage tiling, K-split, ring depth and attention splits, and the static
task-to-SM order, chosen to minimise the cost model's predicted makespan.

Order: list scheduling. Tasks are taken in a topological order (layer by layer, stage by stage;
inside a stage in the order their consumers need them, see dag.stage_priority), and each goes to
the SM that would finish it first given what that SM already holds (its previous task's end, its
loader's progress through the ring, the activation chunk it has staged). Every SM's list is then
a subsequence of one topological order: no SM ever waits on a task scheduled after it, and no
cycle is possible.

Tiling: candidates are screened on a two-layer model of the step (the steady-state layer period
extrapolated to all layers, the LM head scheduled apart), improved by coordinate descent, and the
best few are scheduled in full. Everything is deterministic: fixed candidate order, ties broken
by the lowest SM index and the first candidate.
"""
from __future__ import annotations

import dataclasses
import heapq
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import DeployConfig, ModelConfig
from .cost import CostConstants, CostModel, LinearTiming, constants_for, simulate, staged_key
from .dag import STAGE_ORDER, Dag, StageTasks
from .plan import LINEAR_KINDS, THREADS, LinearTiling, Plan, Task, batched, compress_runs, fitting_wpr, tiled_weights
from .smem import required_stage_bytes
from .simple import linear_shapes

Progress = Callable[[str, float], None]  # (message, fraction done)


# ---- list scheduling ---------------------------------------------------------------------------

@dataclass
class Schedule:
    placed: list  # per group of tasks, in scheduling order: (kind, layer, task indices, SM of each)
    sms: int
    makespan: float
    layer_done: list  # per layer: when its last down task ends
    head_start: float  # when the first LM-head task starts

    @property
    def per_sm(self) -> list[list[Task]]:
        """Per SM: its Tasks in execution order (made on demand: screening needs only times)."""
        out: list[list[Task]] = [[] for _ in range(self.sms)]
        for kind, layer, idxs, sm_of in self.placed:
            for idx, i in zip(idxs, sm_of):
                out[i].append(Task(kind, layer, idx))
        return out


def _kinds_of(plan: Plan, layers: range | None, head: bool):
    L = plan.model.num_hidden_layers
    for layer in (range(L) if layers is None else layers):
        for kind in STAGE_ORDER:
            yield kind, layer
    if head:
        yield "lm_head", 0
        yield "argmax", 0


# Groups of at least this many tasks are placed a round at a time with numpy (_place_rounds); the
# smaller ones task by task (_place_linear), where a round over every SM would cost more.
ROUNDS_FROM = 32


def list_schedule(plan: Plan, cost: CostModel | None = None, *, layers: range | None = None,
                  head: bool = True, init: tuple | None = None, progress: Progress | None = None) -> Schedule:
    """Earliest-finish list scheduling of the plan's tasks (or of `layers` and/or the head).

    Tasks of a stage never depend on each other, so their ready times are known when the stage
    begins; consecutive tasks with the same ready time, staged chunk and size form a group, whose
    tasks go one by one to the SM that would finish each first. Ties go to the lowest SM index.

    `init` = (end, loader, staged, ring history) of the SMs before the first task, as a
    schedule's `state` leaves them (default: all idle at time 0)."""
    cost = cost or CostModel(plan)
    dag = cost.dag
    S = plan.sms
    D = cost.depth
    if init is None:
        end = [0.0] * S
        f = [0.0] * S
        staged = [-1] * S
        hist = [[0.0] * D for _ in range(S)]
    else:
        end, f, staged = list(init[0]), list(init[1]), list(init[2])
        hist = [list(h) for h in init[3]]
    sms = _SMs(end, f, staged, hist)
    placed: list = []
    # (stage, layer) -> per counter, when its last bump came. Stages are scheduled whole, in
    # topological order: a stage's counters are all complete once it is here, and a dependency on
    # a stage not here names producers outside the scheduled window (no wait is charged for it).
    bumped: dict = {}
    sync = cost.c.sync_latency_s
    L = plan.model.num_hidden_layers
    layer_done = [0.0] * L
    head_start = float("inf")
    stages = list(_kinds_of(plan, layers, head))
    for n_done, (kind, layer) in enumerate(stages):
        if progress is not None and n_done % 5 == 0:
            progress("schedule", n_done / len(stages))
        st = dag.stage_tasks(kind, layer)
        ready_of = {}  # per dependency class of the stage's tasks: when its counters are all complete
        for c, deps in st.deps.items():
            ready = 0.0
            for stage, dl, first, count, _ in deps:
                times = bumped.get((stage, layer + dl))
                if times is not None:
                    ready = max(ready, float(times[first:first + count].max()) + sync)
            ready_of[c] = ready
        heaps: dict = {}  # _place_linear's
        idx_all: list = []
        end_all: list = []
        for (ready, key, _), lo, hi in _groups(cost, kind, layer, st, ready_of):
            idxs = st.order[lo:hi]
            if kind not in LINEAR_KINDS:
                sm_of, end_of = _place_fixed(cost.attn_time if kind == "attn" else cost.argmax_time, hi - lo, ready,
                                             sms.end)
            elif hi - lo >= ROUNDS_FROM:
                sm_of, end_of = _place_rounds(cost.timing(kind, layer, idxs[0]), hi - lo, key, ready, sms)
                for sig in [sig for sig in heaps if sig[1] == key]:  # the chunk now staged can make
                    del heaps[sig]  # SMs earlier there than their entries (see _place_linear)
            else:
                sm_of, end_of = _place_linear(cost.timing(kind, layer, idxs[0]), hi - lo, key, ready, sms, heaps)
            if kind in BLOCK_KINDS:
                # The group's tasks are interchangeable and their consumers wait for all of them:
                # give each SM a contiguous block (one strided run) instead of the pop order.
                # Every SM keeps its count and its end times, so the prediction is unchanged.
                ends: dict = {}
                for i, t_end in zip(sm_of, end_of):
                    ends.setdefault(i, []).append(t_end)
                sm_of = [i for i, es in ends.items() for _ in es]
                end_of = [t_end for es in ends.values() for t_end in es]
            placed.append((kind, layer, idxs, sm_of))
            idx_all += idxs
            end_all += end_of
        if st.per_step:  # each counter: when its last task ends
            times = bumped[(kind, layer)] = np.zeros(len(st.dep_of) // st.per_step)
            np.maximum.at(times, np.array(idx_all) // st.per_step, end_all)
        if kind == "lm_head":
            head_start = min(end_all)
        elif kind == "down":
            layer_done[layer] = max(0.0, max(end_all))
    if progress is not None:
        progress("schedule", 1.0)
    sched = Schedule(placed, S, max(end), layer_done, head_start)
    sched.state = (end, f, staged, hist)  # type: ignore[attr-defined]
    return sched


def _groups(cost: CostModel, kind: str, layer: int, st: StageTasks, ready_of: dict) -> list:
    """The stage's groups: the longest runs of consecutive tasks (in st.order) with the same ready
    time, staged chunk key and load time, each as [(ready, key, load), start, stop]."""
    k = cost.kinds.get(kind)
    if k is not None:
        ks, last_tile = k["ksplit"], k["tiles"] - 1
        keys = [staged_key(kind, layer, sp, ks) for sp in range(ks)]
    out: list = []
    for lo, hi in st.runs:
        idx = st.order[lo]
        if k is None:
            sig = (ready_of[st.dep_of[idx]], -1, 0.0)
        else:
            sig = (ready_of[st.dep_of[idx]], keys[idx % ks], k["wt_last"] if idx // ks == last_tile else k["wt"])
        if out and out[-1][0] == sig:
            out[-1][2] = hi
        else:
            out.append([sig, lo, hi])
    return out


class _SMs:
    """The SMs' state during list scheduling: when each one's consumer (end) and loader (f) are
    done, its staged activation chunk, its ring history, and the version of all that (the
    number of tasks it has been given)."""

    __slots__ = ("end", "f", "staged", "hist", "version")

    def __init__(self, end: list, f: list, staged: list, hist: list):
        self.end, self.f, self.staged, self.hist = end, f, staged, hist
        self.version = [0] * len(end)


def _place_linear(tm: LinearTiming, n: int, key: int, ready: float, sms: _SMs,
                  heaps: dict) -> tuple[list[int], list[float]]:
    """Give n interchangeable linear tasks (timing `tm`, staged chunk `key`, ready at `ready`) one
    by one to the SM that would finish each first (ties: the lowest SM), updating the SMs' state;
    returns the SM and the end of each task.

    `heaps` (one per stage) keeps per group signature (tm, key, ready) met so far a heap of the
    SMs' (end, SM, start, loader finish, version) and per SM the version of its newest entry. An
    SM given a task gets a new version and its entries go stale, but stay lower bounds of its
    times: they only grow with its end, loader finish and ring history, which only grow. The one
    exception, a chunk newly staged that a group reuses, gets fresh entries at once (all heaps of
    this key). A stale entry that reaches the top is replaced by the SM's current times, so each
    pick is the one a fresh computation of every SM's times would make, while a group of one
    task costs a few updates instead of one per SM (stages whose order alternates K-splits task
    by task form ~7,000 of those for Llama-3-8B)."""
    end, f, staged, hist, version = sms.end, sms.f, sms.staged, sms.hist, sms.version
    got = heaps.get((tm, key, ready))
    if got is None:
        s_v, f_v, e_v = tm.end_vec(np.array(end), np.array(f), np.array(staged) == key, ready, np.array(hist))
        heap = list(zip(e_v.tolist(), range(len(end)), s_v.tolist(), f_v.tolist(), version))
        heapq.heapify(heap)
        got = heaps[(tm, key, ready)] = (heap, list(version))
    heap, newest = got
    sm_of, end_of = [], []
    for _ in range(n):
        t_end, i, s_i, f_i, v = heap[0]
        while v != version[i]:  # stale
            if newest[i] == version[i]:  # the current entry is further down
                heapq.heappop(heap)
            else:
                s2, f2, e2 = tm.end(end[i], f[i], staged[i] == key, ready, hist[i])
                heapq.heapreplace(heap, (e2, i, s2, f2, version[i]))
                newest[i] = version[i]
            t_end, i, s_i, f_i, v = heap[0]
        f[i] = f_i
        staged[i] = key
        hist[i] = h = tm.hist_after(hist[i], s_i, t_end)
        end[i] = t_end
        version[i] = v = v + 1
        for (tm2, key2, ready2), (heap2, newest2) in heaps.items():
            if key2 == key:  # its next task there reuses the chunk (and here: the group's next)
                s2, f2, e2 = tm2.end(t_end, f_i, True, ready2, h)
                if heap2 is heap:
                    heapq.heapreplace(heap, (e2, i, s2, f2, v))
                else:
                    heapq.heappush(heap2, (e2, i, s2, f2, v))
                newest2[i] = v
        sm_of.append(i)
        end_of.append(t_end)
    return sm_of, end_of


def _place_rounds(tm: LinearTiming, n: int, key: int, ready: float, sms: _SMs) -> tuple[list[int], list[float]]:
    """_place_linear for a large group, computed a round at a time for all SMs (numpy, the same
    float operations): round r holds every SM's r-th task of the group, were it given that many.
    Each SM's ends grow from round to round, so taking tasks one by one from the SM that would end
    first picks the n smallest (end, SM) pairs of all rounds, in that order; rounds are added
    until no SM has every one of its computed tasks picked (its next could be among them)."""
    S = len(sms.end)
    end, f, hist = np.array(sms.end), np.array(sms.f), np.array(sms.hist)
    reuse = np.array(sms.staged) == key
    ends, fs, hists = [end], [f], [hist]  # the SMs' state after 0, 1, ... tasks of the group
    sm_of = np.tile(np.arange(S), -(-n // S))
    while True:
        s, f, end = tm.end_vec(end, f, reuse, ready, hist)
        hist = tm.hist_after_vec(hist, s, end)
        reuse = np.ones(S, dtype=bool)
        ends.append(end)
        fs.append(f)
        hists.append(hist)
        rounds = len(ends) - 1
        if rounds * S < n:
            continue
        if len(sm_of) < rounds * S:
            sm_of = np.tile(np.arange(S), rounds)
        all_ends = np.concatenate(ends[1:])  # round by round
        picked = np.lexsort((sm_of, all_ends))[:n]  # by end, then SM
        count = np.bincount(picked % S, minlength=S)  # tasks per SM
        if count.max() < rounds:
            break
    at = np.arange(S)
    sms.end[:] = np.stack(ends)[count, at].tolist()
    sms.f[:] = np.stack(fs)[count, at].tolist()
    sms.hist[:] = np.stack(hists)[count, at].tolist()
    for i in np.flatnonzero(count).tolist():
        sms.staged[i] = key
        sms.version[i] += int(count[i])
    return (picked % S).tolist(), all_ends[picked].tolist()


def _place_fixed(time: float, n: int, ready: float, end: list) -> tuple[list[int], list[float]]:
    """_place_linear for tasks of a fixed duration (attention, argmax)."""
    heap = [(max(e, ready) + time, i) for i, e in enumerate(end)]
    heapq.heapify(heap)
    sm_of, end_of = [], []
    for _ in range(n):
        t_end, i = heap[0]
        end[i] = t_end
        heapq.heapreplace(heap, (max(t_end, ready) + time, i))
        sm_of.append(i)
        end_of.append(t_end)
    return sm_of, end_of


# ---- the tiling search ---------------------------------------------------------------------------

CHUNK_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
ATTN_SPLITS = (1, 2, 4, 6, 8, 12, 16, 24, 32)
MAX_STAGES = 8
TIME_TOL = 0.002  # plans within 0.2% of the best predicted time count as equally fast
BLOCK_KINDS = ("o", "down", "lm_head")  # stages whose consumers wait for every tile
STAGE_TARGETS = (4 * 1024, 8 * 1024, 16 * 1024, 32 * 1024, 64 * 1024)  # ring slot sizes tried


def valid_splits(kind: str, k: int, max_split: int = 64) -> list[int]:
    if kind == "lm_head":
        return [1]
    return [s for s in range(1, max_split + 1) if k % s == 0 and (k // s) % 8 == 0]


def tiling_ok(kind: str, t: LinearTiling) -> str | None:
    """Why a tiling is not one the kernel can run, or None."""
    if t.warps_per_row not in (1, 2, 4, 8):
        return f"warps_per_row {t.warps_per_row} not in 1, 2, 4, 8"
    if t.rows <= 0 or t.rows % t.chunk_rows:
        return f"rows {t.rows} not a positive multiple of the chunk's {t.chunk_rows} rows"
    if t.ksplit <= 0 or t.k % t.ksplit or (t.k // t.ksplit) % 8:
        return f"ksplit {t.ksplit} does not cut K={t.k} into multiples of 8"
    if not t.whole_column_blocks:
        return f"warps_per_row {t.warps_per_row} does not cut the batched chunk's {t.kc} columns into multiples of 8"
    if kind == "gate_up" and t.rows % 2:
        return f"rows {t.rows} odd: a gate/up task holds whole (gate, up) row pairs"
    if kind == "lm_head" and t.ksplit != 1:
        return "the LM head cannot be K-split (its argmax needs full sums)"
    return None


@dataclass
class Candidate:
    tilings: dict
    attn_splits: int
    stages: int
    time: float = float("inf")  # predicted step time (screening model or full schedule)
    smem: int = 0
    full: bool = False

    def key(self) -> tuple:
        return (tuple((k, t.rows, t.ksplit, t.warps_per_row) for k, t in sorted(self.tilings.items())),
                self.attn_splits, self.stages)


class Searcher:
    """Evaluates candidate plans for one (model, deployment) with one cost model, with caching."""

    def __init__(self, model: ModelConfig, deploy: DeployConfig, *, allow_ksplit: bool = True,
                 smem_limit: int | None = None, constants: CostConstants | None = None,
                 context: int | None = None, progress: Progress | None = None):
        self.model, self.deploy = model, deploy
        self.allow_ksplit = allow_ksplit
        self.limit = deploy.gpu.smem_per_block if smem_limit is None else smem_limit
        self.constants = constants or constants_for(deploy.gpu)
        self.context = context
        self.progress = progress
        self.budget: float | None = None  # with a time budget: least shared memory meeting it
        self.shapes = linear_shapes(model)
        self.batched = batched(deploy.batch)
        self._cache: dict = {}
        self._head: dict = {}
        self._stages: dict = {}  # StageTasks shared by the candidates' Dags
        self.evals = 0

    # -- plans ---------------------------------------------------------------------------------
    def plan_of(self, tilings: dict, attn_splits: int, stages: int, model: ModelConfig | None = None) -> Plan:
        gpu = self.deploy.gpu
        return Plan(model or self.model, self.deploy, gpu.sms, THREADS, dict(tilings), attn_splits, stages,
                    required_stage_bytes(tilings), [], strategy="search")

    def max_stages(self, tilings: dict, attn_splits: int) -> int:
        p = self.plan_of(tilings, attn_splits, 0)
        fixed, sb = p.smem_bytes, p.stage_bytes
        return min(MAX_STAGES, (self.limit - fixed) // sb)

    def cost_of(self, plan: Plan) -> CostModel:
        return CostModel(plan, self.constants, self.context, Dag(plan, self.context, self._stages))

    # -- evaluation ----------------------------------------------------------------------------
    def screen(self, tilings: dict, attn_splits: int, stages: int | None = None) -> Candidate:
        """Predicted step time on the screening model: one steady-state layer x layers, plus the
        LM head scheduled from a synchronised start. Stages default to the deepest ring that fits."""
        if stages is None:
            stages = self.max_stages(tilings, attn_splits)
        cand = Candidate(dict(tilings), attn_splits, stages)
        key = cand.key()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if stages < 2:
            cand.time = float("inf")
            cand.smem = self.plan_of(tilings, attn_splits, 2).smem_bytes
            self._cache[key] = cand
            return cand
        plan = self.plan_of(tilings, attn_splits, stages)
        cost = self.cost_of(plan)
        self.evals += 1
        layer = list_schedule(plan, cost, layers=range(1, 2), head=False)
        hkey = (tilings["lm_head"], tilings["down"].ksplit, stages, plan.stage_bytes)
        head = self._head.get(hkey)
        if head is None:
            head = self._head[hkey] = list_schedule(plan, cost, layers=range(0), head=True).makespan
        L = self.model.num_hidden_layers
        cand.time = L * layer.makespan + head + cost.c.sync_latency_s + cost.c.launch_s
        cand.smem = plan.smem_bytes
        self._cache[key] = cand
        return cand

    def full(self, cand: Candidate) -> tuple[Candidate, Plan]:
        """Schedule every task of the candidate; its time becomes the full prediction."""
        plan = self.plan_of(cand.tilings, cand.attn_splits, cand.stages)
        cost = self.cost_of(plan)
        sched = list_schedule(plan, cost, progress=self.progress)
        plan.schedule = [compress_runs(lst) for lst in sched.per_sm]
        out = Candidate(dict(cand.tilings), cand.attn_splits, cand.stages,
                        sched.makespan + cost.c.launch_s, plan.smem_bytes, True)
        return out, plan

    # -- candidate tilings ---------------------------------------------------------------------
    def options(self, kind: str) -> list[LinearTiling]:
        n, k = self.shapes[kind]
        splits = valid_splits(kind, k) if self.allow_ksplit else [1]
        out = []
        for s in splits:
            for wpr in (1, 2, 4, 8):
                cr = self.tiling(n, k, 1, s, wpr).chunk_rows
                for c in CHUNK_COUNTS:
                    rows = cr * c
                    if rows >= n + cr:
                        break
                    t = self.tiling(n, k, rows, s, wpr)
                    if tiling_ok(kind, t) is None:
                        out.append(t)
        return out

    def tiling(self, n: int, k: int, rows: int, ksplit: int, warps_per_row: int) -> LinearTiling:
        return LinearTiling(n, k, rows, ksplit, warps_per_row, self.batched, tiled_weights(self.deploy))

    def initial(self, stage_target: int) -> dict:
        """Per kind: the smallest K-split whose chunk fits beside the hidden-size activation
        chunk, the fewest warps per row whose chunk fits `stage_target`, and the rows that
        balance the stage's tasks over the SMs (by the cost model's per-task estimate)."""
        m, gpu = self.model, self.deploy.gpu
        H = m.hidden_size
        tilings = {}
        share = gpu.read_bandwidth / gpu.sms
        for kind, (n, k) in self.shapes.items():
            splits = valid_splits(kind, k) if self.allow_ksplit else [1]
            s = next((x for x in splits if k // x <= H), splits[-1])
            kc = k // s
            wpr = fitting_wpr(n, k, s, self.batched, stage_target)
            cr = self.tiling(n, k, 1, s, wpr).chunk_rows
            best = None
            for c in CHUNK_COUNTS:
                rows = cr * c
                if rows >= n + cr:
                    break
                t = self.tiling(n, k, rows, s, wpr)
                rounds = -(-t.tasks // gpu.sms)
                est = rounds * (rows * kc * 2 / share + self.constants.task_overhead_s + self.constants.stage_fixed_s)
                if best is None or est < best[0] * (1 - 1e-9):
                    best = (est, t)
            tilings[kind] = best[1]
        return tilings

    def retarget(self, tilings: dict, target: int) -> dict:
        """Every stage's chunk re-cut to fit `target` bytes (the fewest warps per row that fit),
        rows rounded up to whole chunks: the global move that changes the ring slot size."""
        out = {}
        for kind, t in tilings.items():
            wpr = fitting_wpr(t.n, t.k, t.ksplit, self.batched, target)
            cr = dataclasses.replace(t, warps_per_row=wpr).chunk_rows
            out[kind] = dataclasses.replace(t, warps_per_row=wpr, rows=-(-t.rows // cr) * cr)
        return out

    def attn_options(self) -> list[int]:
        B, nkv, sms = self.deploy.batch, self.model.num_key_value_heads, self.deploy.gpu.sms
        fill = max(1, min(32, sms // (B * nkv)))
        return sorted(set(ATTN_SPLITS) | {fill})

    def neighbours(self, kind: str, t: LinearTiling) -> list[LinearTiling]:
        """Tilings near `t`: other rows (a few chunk counts either side), other warps per row
        (keeping about the same rows), other K-splits (halved or doubled)."""
        n, k = t.n, t.k
        out = []
        cr = t.chunk_rows
        cnts = [c for c in CHUNK_COUNTS if cr * c < n + cr]
        if t.chunks in cnts:
            i = cnts.index(t.chunks)
            for j in range(max(0, i - 2), min(len(cnts), i + 3)):
                if j != i:
                    out.append(dataclasses.replace(t, rows=cr * cnts[j]))
        for wpr in (t.warps_per_row // 2, t.warps_per_row * 2):
            if wpr in (1, 2, 4, 8):
                cr2 = dataclasses.replace(t, warps_per_row=wpr).chunk_rows
                rows = max(cr2, round(t.rows / cr2) * cr2)
                out.append(dataclasses.replace(t, rows=rows, warps_per_row=wpr))
        if self.allow_ksplit and kind != "lm_head":
            splits = valid_splits(kind, k)
            i = splits.index(t.ksplit)
            for j in (i - 1, i + 1):
                if 0 <= j < len(splits):
                    s2 = splits[j]
                    # keep the task's bytes about the same: rows scale with the split
                    rows = max(cr, round(t.rows * s2 / t.ksplit / cr) * cr)
                    out.append(dataclasses.replace(t, ksplit=s2))
                    if rows != t.rows:
                        out.append(dataclasses.replace(t, ksplit=s2, rows=rows))
        return [x for x in out if tiling_ok(kind, x) is None]

    # -- the search ----------------------------------------------------------------------------
    def evaluate(self, tilings: dict, attn_splits: int) -> Candidate:
        """screen(), and with a time budget the shallowest ring that meets it."""
        c = self.screen(tilings, attn_splits)
        if self.budget is None or c.time > self.budget or c.stages <= 2:
            return c
        lo, hi = 2, c.stages  # hi meets the budget
        while lo < hi:
            mid = (lo + hi) // 2
            if self.screen(tilings, attn_splits, mid).time <= self.budget:
                hi = mid
            else:
                lo = mid + 1
        return self.screen(tilings, attn_splits, hi)

    def rank(self, c: Candidate) -> tuple:
        if self.budget is None:
            return (c.time, c.smem)
        ok = c.time <= self.budget
        return (not ok, c.smem if ok else c.time, c.time)

    def better(self, a: Candidate, b: Candidate) -> bool:
        """Is a better than b: clearly faster, or as fast with less shared memory. With a time
        budget: meets it with less shared memory (or is closer to meeting it)."""
        if self.budget is not None:
            return self.rank(a) < self.rank(b)
        if a.time < b.time * (1 - TIME_TOL):
            return True
        if a.time <= b.time * (1 + TIME_TOL) and a.smem < b.smem:
            return True
        return False

    def descend(self, cand: Candidate, rounds: int = 2, frac: tuple = (0.0, 1.0)) -> Candidate:
        best = cand
        lo, hi = frac
        for r in range(rounds):
            improved = False
            kinds = list(LINEAR_KINDS)
            for ki, kind in enumerate(kinds):
                self._tick("search", lo + (hi - lo) * (r + ki / (len(kinds) + 1)) / rounds)
                for t in self.neighbours(kind, best.tilings[kind]):
                    til = dict(best.tilings)
                    til[kind] = t
                    c = self.evaluate(til, best.attn_splits)
                    if self.better(c, best):
                        best, improved = c, True
            for tgt in STAGE_TARGETS:
                til = self.retarget(best.tilings, tgt)
                if til != best.tilings:
                    c = self.evaluate(til, best.attn_splits)
                    if self.better(c, best):
                        best, improved = c, True
            for a in self.attn_options():
                if a != best.attn_splits:
                    c = self.evaluate(best.tilings, a)
                    if self.better(c, best):
                        best, improved = c, True
            if not improved:
                break
        return best

    def trim_stages(self, cand: Candidate) -> Candidate:
        """The shallowest ring predicted as fast as the deepest one that fits."""
        best = cand
        if self.budget is not None:
            return cand
        for d in range(2, cand.stages):
            c = self.screen(cand.tilings, cand.attn_splits, d)
            if c.time <= cand.time * (1 + TIME_TOL):
                best = c
                break
        return best

    def covering(self, cand: Candidate) -> Candidate | None:
        """The candidate with its heaviest per-layer stage cut into at least one task per SM, or
        None where it has that already (or its rows cannot be halved). Fewer tasks than SMs means
        every task sits on its own SM and the stage's consumers wait for the slowest of them; the
        model, whose SMs all stream at one rate, predicts both cuts equal, but on an H100 Llama-3.2-1B
        with gate/up tasks of 64 rows (256 tasks) ran 5% faster than with 128 (128 tasks on 132 SMs)
        at batch 1 and 8, contexts 512 and 4,096 (benchmarks/RESULTS.md, sessions 5-6)."""
        sms = self.deploy.gpu.sms
        kind = max((k for k in cand.tilings if k != "lm_head"), key=lambda k: self.shapes[k][0] * self.shapes[k][1])
        t = cand.tilings[kind]
        if t.tasks >= sms:
            return None
        while t.tasks < sms:
            t = dataclasses.replace(t, rows=t.rows // 2)
            if tiling_ok(kind, t) is not None:
                return None
        return Candidate({**cand.tilings, kind: t}, cand.attn_splits, cand.stages)

    def with_splits(self, tilings: dict, attn_splits: int) -> tuple[Candidate, Plan]:
        """These tilings with that many attention splits: ring depth trimmed, fully scheduled."""
        return self.full(self.trim_stages(self.evaluate(tilings, attn_splits)))

    def resplit(self, cand: Candidate, plan: Plan) -> tuple[Candidate, Plan]:
        """The fully scheduled candidate with half or twice the attention splits, where the full
        schedule predicts it faster. The descent compares split counts on the screening estimate,
        which leaves out where the list scheduler puts the attention tasks; for Llama-3.2-1B at
        batch 1 the full schedule predicts 8 splits 0.6% faster than the 16 the descent keeps, and
        on an H100 they measured 3% faster (benchmarks/RESULTS.md, session 7). Twice the splits is
        skipped where it gives more attention tasks than SMs (two tasks on one SM run one after
        the other: 32 splits measured 28% slower than 16 for Llama-3.2-1B, session 7)."""
        best_c, best_p = cand, plan
        groups = self.deploy.batch * self.model.num_key_value_heads
        for a in (cand.attn_splits // 2, cand.attn_splits * 2):
            if a < 1 or a * groups > self.deploy.gpu.sms:
                continue
            c, p = self.with_splits(cand.tilings, a)
            if c.time < best_c.time:
                best_c, best_p = c, p
        return best_c, best_p

    def _tick(self, what: str, frac: float) -> None:
        if self.progress is not None:
            self.progress(what, min(1.0, max(0.0, frac)))

    def run(self, finalists: int = 2) -> tuple[Plan, dict]:
        gpu = self.deploy.gpu
        starts = []
        for tgt in STAGE_TARGETS:
            til = self.initial(tgt)
            a = max(1, min(32, gpu.sms // (self.deploy.batch * self.model.num_key_value_heads)))
            c = self.evaluate(til, a)
            if c.time < float("inf"):
                starts.append(c)
        if not starts:
            raise_no_fit(self)
        starts.sort(key=self.rank)
        bests = []
        n_start = min(2, len(starts))
        for i, c in enumerate(starts[:n_start]):
            bests.append(self.descend(c, frac=(0.8 * i / n_start, 0.8 * (i + 1) / n_start)))
        uniq: dict = {}
        for c in sorted(bests, key=self.rank):
            uniq.setdefault(c.key(), c)
        finals = []
        for c in list(uniq.values())[:finalists]:
            c = self.trim_stages(c)
            finals.append(self.full(c))
        base = []
        if self.budget is None and self.allow_ksplit and self.limit >= self.deploy.gpu.smem_per_block:
            base = self.baselines()
        best_c, best_p = finals[0]
        for c, p in finals[1:]:
            if self.better(c, best_c):
                best_c, best_p = c, p
        for c, p in base:  # never slower than the baseline, not even within the tolerance
            if c.time < best_c.time:
                best_c, best_p = c, p
        if self.budget is None:
            cover = self.covering(best_c)
            if cover is not None:  # taken unless predicted slower (beyond the float sum's rounding)
                c, p = self.full(cover)
                if c.time <= best_c.time * (1 + 1e-9):
                    best_c, best_p = c, p
            best_c, best_p = self.resplit(best_c, best_p)
        best_p.notes = self.notes_of(best_c, best_p)
        self._tick("search", 1.0)
        return best_p, best_p.notes

    def notes_of(self, c: Candidate, plan: Plan) -> dict:
        """plan.json's commentary on a fully scheduled candidate (not part of the plan hash)."""
        return {
            "predicted_us": round(c.time * 1e6, 2),
            "search_evals": self.evals,
            "cost_model": self.constants.source,
            "context": self.cost_of(plan).dag.context,
            "ksplit": self.allow_ksplit,
        }

    def alternatives(self, best: Plan, n: int) -> list[Plan]:
        """Up to n plans other than `best` (what run() returned), fastest predicted first: the
        candidates this search screened, best screened first, each given its ring depth and full
        schedule as run() gives its finalists. The cost model calls plans within a few percent
        equal and is only a model; these are what adamk-tune measures beside the chosen plan."""
        seen = {best.plan_hash}
        found: list[tuple[float, Plan]] = []
        for c in sorted(self._cache.values(), key=self.rank):  # a copy: trim_stages adds entries
            if len(found) == n:
                break
            if c.time == float("inf"):  # no 2-deep ring fits
                continue
            full_c, plan = self.full(self.trim_stages(c))
            if plan.plan_hash in seen:  # the same plan reached with another ring depth screened
                continue
            seen.add(plan.plan_hash)
            plan.notes = self.notes_of(full_c, plan)
            found.append((full_c.time, plan))
        found.sort(key=lambda tp: tp[0])  # stable: equal predictions keep the screening order
        return [p for _, p in found]


def _baselines(self: Searcher) -> list:
    """The round-robin plan (simple.make_plan), and its tiling list-scheduled: the search never
    returns a plan predicted slower than the baseline."""
    from .simple import PlanError, make_plan

    try:
        rr = make_plan(self.model, self.deploy, strategy="round-robin")
    except PlanError:
        return []
    rr.strategy = "search"
    cost = self.cost_of(rr)
    t_rr = simulate(rr, cost).predicted_s
    return [(Candidate(dict(rr.tilings), rr.attn_splits, rr.stages, t_rr, rr.smem_bytes, True), rr)]


Searcher.baselines = _baselines  # type: ignore[attr-defined]


def raise_no_fit(s: Searcher):
    from .simple import PlanError
    m, d = s.model, s.deploy
    raise PlanError(f"{m.name} on {d.gpu.name} batch {d.batch}: no tiling fits {s.limit} bytes of shared memory"
                    f" with a 2-deep weight ring")


def search_plan(model: ModelConfig, deploy: DeployConfig, *, allow_ksplit: bool = True,
                smem_limit: int | None = None, constants: CostConstants | None = None,
                context: int | None = None, progress: Progress | bool | None = None) -> Plan:
    """The searched plan for (model, deploy): tilings, attention splits, ring depth and the
    static per-SM order minimising the predicted step time (then shared memory). Deterministic.

    progress: a callback (message, fraction) or True for a progress bar on stderr."""
    if progress is True:
        progress = stderr_bar()
    s = Searcher(model, deploy, allow_ksplit=allow_ksplit, smem_limit=smem_limit, constants=constants,
                 context=context, progress=progress or None)
    plan, _ = s.run()
    if progress:
        progress("done", 1.0)
    return plan


def search_plans(model: ModelConfig, deploy: DeployConfig, n: int) -> list[Plan]:
    """The n best distinct plans the search knows for (model, deploy): search_plan's plan first
    (the one adamk-gen compiles, unchanged), then up to n - 1 alternatives, fastest predicted
    first (Searcher.alternatives). Fewer when the search screened fewer distinct plans."""
    s = Searcher(model, deploy)
    best, _ = s.run()
    return [best, *s.alternatives(best, n - 1)]


def best_unsplit(model: ModelConfig, deploy: DeployConfig, *, smem_limit: int | None = None, **kw) -> Plan:
    """The best plan without any K-split: under the GPU's own shared-memory limit when some
    unsplit plan fits it; otherwise (the point of K-splitting: e.g. Llama-3-8B on Ada) with the
    limit lifted to the largest of any GPU in the table (Hopper's 227 KB), a hypothetical plan
    that does not fit the target."""
    from ..config.gpus import GPUS
    from .simple import PlanError

    if smem_limit is not None:
        return search_plan(model, deploy, allow_ksplit=False, smem_limit=smem_limit, **kw)
    try:
        return search_plan(model, deploy, allow_ksplit=False, **kw)
    except PlanError:
        return search_plan(model, deploy, allow_ksplit=False,
                           smem_limit=max(g.smem_per_block for g in GPUS.values()), **kw)


@dataclass
class KsplitClaim:
    """The paper's claim for one deployment: the K-split plan with the least shared memory whose
    predicted time is no worse than the best plan without K-split."""

    unsplit: Plan
    unsplit_s: float
    ksplit: Plan
    ksplit_s: float

    @property
    def unsplit_fits(self) -> bool:
        return self.unsplit.smem_bytes <= self.unsplit.deploy.gpu.smem_per_block

    @property
    def ratio(self) -> float:
        return self.ksplit.smem_bytes / self.unsplit.smem_bytes

    @property
    def holds(self) -> bool:
        return self.ratio <= 0.5 and self.ksplit_s <= self.unsplit_s * (1 + TIME_TOL)

    def describe(self) -> str:
        fit = "fits" if self.unsplit_fits else f"does not fit {self.unsplit.deploy.gpu.smem_per_block} B"
        return (f"best plan without K-split: {self.unsplit.smem_bytes} B ({fit}), predicted"
                f" {self.unsplit_s * 1e6:,.1f} us; least shared memory with K-split at no worse time:"
                f" {self.ksplit.smem_bytes} B, predicted {self.ksplit_s * 1e6:,.1f} us -> peak shared memory"
                f" {100 * (1 - self.ratio):.0f}% lower ({'claim holds' if self.holds else 'claim does NOT hold'})")


def ksplit_claim(model: ModelConfig, deploy: DeployConfig, *, constants: CostConstants | None = None,
                 context: int | None = None) -> KsplitClaim:
    """Search the best unsplit plan, then the K-split plan with the least shared memory that is
    predicted no slower (both on the full schedule)."""
    from .cost import simulate as _sim

    unsplit = best_unsplit(model, deploy, constants=constants, context=context)
    t_u = _sim(unsplit, CostModel(unsplit, constants, context)).predicted_s
    s = Searcher(model, deploy, constants=constants, context=context)
    budget = s.screen(unsplit.tilings, unsplit.attn_splits, unsplit.stages).time
    best = None
    for _ in range(3):
        s.budget = budget
        plan, _ = s.run()
        t_k = _sim(plan, CostModel(plan, constants, context)).predicted_s
        if best is None or (t_k <= t_u * (1 + TIME_TOL), -plan.smem_bytes) > (best[1] <= t_u * (1 + TIME_TOL),
                                                                              -best[0].smem_bytes):
            best = (plan, t_k)
        if t_k <= t_u * (1 + TIME_TOL):
            break
        budget *= t_u / t_k  # the screening model was optimistic for this plan: tighten
    return KsplitClaim(unsplit, t_u, best[0], best[1])


def stderr_bar(width: int = 30) -> Progress:
    state = {"last": -1}

    def cb(msg: str, frac: float) -> None:
        n = int(frac * width)
        if n == state["last"] and msg != "done":
            return
        state["last"] = n
        end = "\n" if msg == "done" else ""
        sys.stderr.write(f"\radamk search [{'#' * n}{'.' * (width - n)}] {int(frac * 100):3d}% {msg:10s}{end}")
        sys.stderr.flush()
    return cb
