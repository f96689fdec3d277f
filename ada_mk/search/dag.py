"""The tile-level DAG of one decode step: every task with its bytes, FLOPs and exact dependencies.

Dependencies are those of `deps.task_deps` (the rule the kernel implements), at tile
granularity: a K-split task of the O projection waits only for the attention heads its K-chunk
reads; a K-chunk of the down projection waits only for the gate/up tiles of its own columns.
`deps_of` caches them per task class (they repeat from layer to layer).
"""
from __future__ import annotations

from dataclasses import dataclass

from .deps import dep_classes, producer_per_step, task_deps, task_signal
from .plan import LINEAR_KINDS, WARPS, Plan, Task

STAGE_ORDER = ("qkv", "attn", "o", "gate_up", "down")  # the kinds of one layer, in topological order

DepT = tuple  # (stage, layer, first, count, per_step)


@dataclass(frozen=True)
class TaskInfo:
    task: Task
    weight_bytes: int  # streamed from DRAM through the stream ring
    stage_bytes: int  # activation bytes read (L2) to stage its input chunk, when not reused
    kv_bytes: int  # K/V cache bytes read (attention)
    out_bytes: int  # partial results written
    flops: int
    deps: tuple  # of DepT
    signal: tuple | None  # (stage, layer, counter)


def nominal_context(max_context: int) -> int:
    """The context a plan is optimised for: the middle of the deployment's range, and at least
    512 positions (or the whole cache, if smaller). Planning for the short end chooses too few
    attention splits for long contexts, and planning for the middle costs nothing measurable at
    the short end. See docs/experiments.md, "Nominal context of a plan"."""
    return max(min(max_context, 512), max_context // 2)


# What a stage's task structure (StageTasks: deps.task_deps, deps.task_signal, stage_priority) reads
# of a plan besides the model and batch: the tilings of the stage and of its producer, for gate/up
# the down projection's (gate/up tiles are ordered by the down K-chunks their columns feed), and
# for attention and its consumer the attention splits.
STAGE_INPUTS = {"qkv": ("qkv", "down"), "attn": ("qkv", "attn_splits"), "o": ("o", "attn_splits"),
                "gate_up": ("gate_up", "o", "down"), "down": ("down", "gate_up"), "lm_head": ("lm_head", "down"),
                "argmax": ("lm_head",)}


@dataclass(frozen=True)
class StageTasks:
    """The tasks of one stage as the list scheduler takes them."""

    order: list  # task indices, in stage_priority's order
    deps: dict  # dependency class (deps.dep_classes) -> its tasks' deps_of, layers relative to the stage's
    dep_of: list  # per task index: its dependency class
    per_step: int  # task i bumps counter i // per_step (deps.task_signal); 0 for argmax, which bumps none
    runs: list  # (start, stop) in `order` of the runs of tasks with one dependency class, K-split and size


class Dag:
    """Per-task properties of a plan's decode step, computed per class and cached.

    `shared`: a dict in which StageTasks are kept for every plan given the same one (the search
    passes one per Searcher: its candidates differ in one stage's tiling at a time)."""

    def __init__(self, plan: Plan, context: int | None = None, shared: dict | None = None):
        self.plan = plan
        m = plan.model
        self.context = nominal_context(plan.deploy.max_context) if context is None else int(context)
        self._deps: dict = {}
        self._stages = {} if shared is None else shared
        self._L = m.num_hidden_layers

    # ---- dependencies --------------------------------------------------------------------
    def deps_of(self, kind: str, layer: int, idx: int) -> tuple:
        rel = self._rel_deps(kind, layer, idx)
        if kind in ("lm_head", "argmax"):
            return rel
        return tuple((s, layer + dl, f, c, p) for (s, dl, f, c, p) in rel)

    def _rel_deps(self, kind: str, layer: int, idx: int) -> tuple:
        """deps_of with layers relative to `layer` (absolute for the LM head and argmax)."""
        key = (kind, idx, layer == 0)
        rel = self._deps.get(key)
        if rel is None:
            rep = 0 if layer == 0 else 1
            if kind in ("lm_head", "argmax"):
                rep = layer
            rel = tuple((d.stage, d.layer - rep, d.first, d.count, d.per_step)
                        for d in task_deps(self.plan, Task(kind, rep, idx)))
            self._deps[key] = rel
        return rel

    def signal_of(self, kind: str, layer: int, idx: int) -> tuple | None:
        return task_signal(self.plan, Task(kind, layer, idx))

    def stage_tasks(self, kind: str, layer: int) -> StageTasks:
        """The tasks of `kind` in `layer` as a scheduler takes them (StageTasks). They depend
        only on the tilings STAGE_INPUTS names (and the model, batch and attention splits), so
        plans that share those share them, through `shared`."""
        p = self.plan
        key = (kind, layer == 0, p.model, p.batch,
               *(p.attn_splits if x == "attn_splits" else p.tilings[x] for x in STAGE_INPUTS[kind]))
        st = self._stages.get(key)
        if st is None:
            dep_of = dep_classes(p, kind)
            first: dict = {}  # class -> its first task
            for i, c in enumerate(dep_of):
                first.setdefault(c, i)
            deps = {c: self._rel_deps(kind, layer, i) for c, i in first.items()}
            per_step = 0 if kind == "argmax" else producer_per_step(p, kind)
            order = stage_priority(p, kind)
            t = p.tilings.get(kind)
            if t is None:
                same = [dep_of[i] for i in order]
            else:  # and the same K-split, and size (only the last tile can be smaller)
                same = [(dep_of[i], i % t.ksplit, i // t.ksplit == t.tiles - 1) for i in order]
            cut = [j for j in range(1, len(order)) if same[j] != same[j - 1]]
            runs = list(zip([0, *cut], [*cut, len(order)]))
            st = self._stages[key] = StageTasks(order, deps, dep_of, per_step, runs)
        return st

    def producers(self, stage: str, layer: int, counter: int) -> list[Task]:
        """The tasks that bump counter `counter` of `stage` in `layer`."""
        p = self.plan
        if stage == "attn":
            ns = p.attn_splits
            return [Task("attn", layer, counter * ns + j) for j in range(ns)]
        ks = p.tilings[stage].ksplit
        return [Task(stage, layer, counter * ks + s) for s in range(ks)]

    # ---- bytes and FLOPs -----------------------------------------------------------------
    def rows_of(self, kind: str, idx: int) -> int:
        t = self.plan.tilings[kind]
        lo, hi = t.row_range(idx // t.ksplit)
        return hi - lo

    def weight_bytes(self, kind: str, idx: int) -> int:
        if kind not in LINEAR_KINDS:
            return 0
        return self.plan.tilings[kind].rows_bytes(self.rows_of(kind, idx))

    def staging_bytes(self, kind: str, layer: int) -> int:
        """Bytes read from global memory (mostly L2) to build the input chunk of a task."""
        p, m, B = self.plan, self.plan.model, self.plan.batch
        H = m.hidden_size
        if kind in ("qkv", "gate_up", "lm_head"):
            kc = p.tilings[kind].kc
            if kind == "qkv" and layer == 0:
                return B * (H + kc) * 2 + kc * 2  # the embedding rows (whole, for rstd), gamma
            # the chunk of the published bf16 stream, the producer tiles' sums of squares, gamma
            prev = {"qkv": "down", "gate_up": "o", "lm_head": "down"}[kind]
            return B * kc * 2 + p.tilings[prev].tiles * B * 4 + kc * 2
        if kind == "o":
            # The copy of the combined output is B * kc * 2 bytes; the partials that the last
            # attention split's combine reads (adamk/attention.cuh) are charged here too, to the
            # O task that waits for them, which keeps the attention split counts that run fastest.
            # See docs/experiments.md, "Attention combine charged to the O projection's staging".
            kc = p.tilings["o"].kc
            heads = -(-kc // m.head_dim)
            return B * kc * p.attn_splits * 4 + 3 * B * heads * p.attn_splits * 2 * 4
        if kind == "down":  # SiLU(gate) * up as bf16, or gate/up's float partials of both
            kc, s = p.tilings["down"].kc, p.tilings["gate_up"].ksplit
            return B * kc * 2 if s == 1 else B * kc * 2 * s * 4
        if kind == "attn":  # the q, k, v partial sums of one group
            return (m.group_size + 2) * m.head_dim * p.tilings["qkv"].ksplit * 4
        if kind == "argmax":
            return B * p.tilings["lm_head"].tiles * 8
        return 0

    def kv_positions(self) -> int:
        """Positions one attention task reads at the nominal context."""
        return -(-self.context // self.plan.attn_splits)

    def kv_bytes(self, kind: str) -> int:
        if kind != "attn":
            return 0
        return self.kv_positions() * self.plan.model.head_dim * 2 * 2

    def flops(self, kind: str, idx: int) -> int:
        p, m = self.plan, self.plan.model
        if kind in LINEAR_KINDS:
            return 2 * self.rows_of(kind, idx) * p.tilings[kind].kc * p.batch
        if kind == "attn":
            return 4 * m.group_size * m.head_dim * self.kv_positions()
        return 0

    def out_bytes(self, kind: str, idx: int) -> int:
        p, m = self.plan, self.plan.model
        if kind in LINEAR_KINDS:
            return self.rows_of(kind, idx) * p.batch * 4
        if kind == "attn":
            return m.group_size * (m.head_dim + 2) * 4
        return 8 * p.batch

    def info(self, task: Task) -> TaskInfo:
        k, l, i = task.kind, task.layer, task.index
        return TaskInfo(task, self.weight_bytes(k, i), self.staging_bytes(k, l), self.kv_bytes(k),
                        self.out_bytes(k, i), self.flops(k, i), self.deps_of(k, l, i), self.signal_of(k, l, i))

    # ---- whole-step totals ---------------------------------------------------------------
    def totals(self) -> dict[str, dict[str, int]]:
        """Per kind: tasks, weight bytes and FLOPs of the whole step."""
        p = self.plan
        out = {}
        L = p.model.num_hidden_layers
        for kind in STAGE_ORDER + ("lm_head", "argmax"):
            n = p.tasks_of(kind)
            reps = L if kind in STAGE_ORDER else 1
            wb = sum(self.weight_bytes(kind, i) for i in range(n)) if kind in LINEAR_KINDS else 0
            fl = sum(self.flops(kind, i) for i in range(n))
            out[kind] = {"tasks": n * reps, "weight_bytes": wb * reps, "flops": fl * reps,
                         "kv_bytes": self.kv_bytes(kind) * n * reps}
        return out


def stage_priority(plan: Plan, kind: str) -> list[int]:
    """The indices of a stage's tasks in the order their consumers need them: QKV tiles group by
    group, attention group-major (an O K-chunk needs its heads for every sequence), gate/up tiles
    in the order of the down projection's K-chunks, split-major for K-split consumers (the staged
    activation chunk is then reused by consecutive tasks)."""
    m = plan.model
    hd, G = m.head_dim, m.group_size
    n = plan.tasks_of(kind)
    if kind == "qkv":
        t = plan.tilings["qkv"]

        def group(row: int) -> int:
            if row < m.q_size:
                return row // (G * hd)
            if row < m.q_size + m.kv_size:
                return (row - m.q_size) // hd
            return (row - m.q_size - m.kv_size) // hd

        def key(i: int):
            tile, split = divmod(i, t.ksplit)
            lo, hi = t.row_range(tile)
            return (min(group(lo), group(hi - 1)), tile, split)
        return sorted(range(n), key=key)
    if kind == "attn":
        ns, nkv = plan.attn_splits, m.num_key_value_heads

        def key(i: int):
            j = i % ns
            g = (i // ns) % nkv
            b = i // (ns * nkv)
            return (g, b, j)
        return sorted(range(n), key=key)
    if kind == "gate_up":
        t = plan.tilings["gate_up"]
        kcd = plan.tilings["down"].kc

        def key(i: int):  # the first down K-chunk the tile's columns feed (rows are gate/up pairs)
            tile, split = divmod(i, t.ksplit)
            return ((t.row_range(tile)[0] // 2) // kcd, tile, split)
        return sorted(range(n), key=key)
    if kind in ("o", "down"):
        ks = plan.tilings[kind].ksplit
        return sorted(range(n), key=lambda i: (i % ks, i // ks))
    return list(range(n))


__all__ = ["Dag", "TaskInfo", "STAGE_ORDER", "stage_priority", "WARPS"]
