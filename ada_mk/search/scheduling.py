"""List scheduling: the static task-to-SM order of a plan, and its predicted makespan.

Tasks are taken in a topological order (layer by layer, stage by stage; inside a stage in the
order their consumers need them, see dag.stage_priority), and each goes to the SM that would
finish it first given what that SM already holds (its previous task's end, its loader's progress
through the ring, the activation chunk it has staged). Every SM's list is then a subsequence of
one topological order: no SM ever waits on a task scheduled after it, and no cycle is possible.
Deterministic: ties go to the lowest SM index.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .cost import CostModel, LinearTiming, staged_key
from .dag import STAGE_ORDER, StageTasks
from .plan import LINEAR_KINDS, Plan, Task

Progress = Callable[[str, float], None]  # (message, fraction done)

BLOCK_KINDS = ("o", "down", "lm_head")  # stages whose consumers wait for every tile


@dataclass
class Schedule:
    placed: list  # per group of tasks, in scheduling order: (kind, layer, task indices, SM of each)
    sms: int
    makespan: float
    layer_done: list  # per layer: when its last down task ends
    head_start: float  # when the first LM-head task starts
    state: tuple = ()  # (end, loader, staged, ring history) of the SMs after the last task

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
                  head: bool = True, progress: Progress | None = None) -> Schedule:
    """Earliest-finish list scheduling of the plan's tasks (or of `layers` and/or the head), from
    all SMs idle at time 0.

    Tasks of a stage never depend on each other, so their ready times are known when the stage
    begins; consecutive tasks with the same ready time, staged chunk and size form a group, whose
    tasks go one by one to the SM that would finish each first. Ties go to the lowest SM index."""
    cost = cost or CostModel(plan)
    dag = cost.dag
    S = plan.sms
    end = [0.0] * S
    f = [0.0] * S
    staged = [-1] * S
    hist = [[0.0] * cost.depth for _ in range(S)]
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
    return Schedule(placed, S, max(end), layer_done, head_start, (end, f, staged, hist))


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


__all__ = ["Schedule", "list_schedule", "Progress", "BLOCK_KINDS", "ROUNDS_FROM"]
