"""The offline search: per-stage tiling, K-split, ring depth and attention splits, chosen to
minimise the cost model's predicted step time; the static task-to-SM order is list scheduling's
(scheduling.py).

Candidates are screened on a two-layer model of the step (the steady-state layer period
extrapolated to all layers, the LM head scheduled apart), improved by coordinate descent, and the
best few are scheduled in full. Everything is deterministic: fixed candidate order, ties broken
by the lowest SM index and the first candidate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import DeployConfig, ModelConfig
from ..config.deploy import stage_format
from .baseline import round_robin_plan
from .cost import CostConstants, CostModel, constants_for, simulate
from .dag import Dag
from .errors import PlanError
from .kernel_rules import batched_multiply, decide_kernel_features, tiled_weights
from .plan import LINEAR_KINDS, THREADS, LinearTiling, Plan, column_block, compress_runs, fitting_wpr
from .scheduling import Progress, list_schedule
from .shapes import linear_shapes, tiling_ok, valid_splits
from .smem import required_stage_bytes

CHUNK_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
ATTN_SPLITS = (1, 2, 4, 6, 8, 12, 16, 24, 32)
MAX_STAGES = 8
TIME_TOL = 0.002  # plans within 0.2% of the best predicted time count as equally fast
STAGE_TARGETS = (4 * 1024, 8 * 1024, 16 * 1024, 32 * 1024, 64 * 1024)  # ring slot sizes tried


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
        self.batched = batched_multiply(deploy.batch)
        self.weights, self.group = deploy.weights, deploy.weights_group
        for kind, (_, k) in self.shapes.items():
            if not self.splits(kind, k):
                fmt = self.fmt(kind)
                hint = "another --weights-group" if fmt["group"] else "not streamable in 8 bits"
                raise PlanError(f"{model.name}: the {kind} stage's K={k} is no whole"
                                f" {column_block(**fmt)}-column blocks of {fmt['weights']} weights with scale group"
                                f" {fmt['group']} ({hint})")
        self._cache: dict = {}
        self._head: dict = {}
        self._stages: dict = {}  # StageTasks shared by the candidates' Dags
        self.evals = 0

    # -- plans ---------------------------------------------------------------------------------
    def plan_of(self, tilings: dict, attn_splits: int, stages: int) -> Plan:
        """The schedule-less plan of these tilings, attention splits and ring depth, its kernel
        features decided."""
        plan = Plan(self.model, self.deploy, self.deploy.gpu.sms, THREADS, dict(tilings), attn_splits, stages,
                    required_stage_bytes(tilings), [], strategy="search")
        return decide_kernel_features(plan)

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
        plan = decide_kernel_features(dataclasses.replace(plan, schedule=[compress_runs(lst) for lst in sched.per_sm]))
        out = Candidate(dict(cand.tilings), cand.attn_splits, cand.stages,
                        sched.makespan + cost.c.launch_s, plan.smem_bytes, True)
        return out, plan

    # -- candidate tilings ---------------------------------------------------------------------
    def fmt(self, kind: str) -> dict:
        """The weights format and scale group stage `kind` streams in (config.deploy.stage_format),
        as LinearTiling's keyword arguments."""
        weights, group = stage_format(kind, self.weights, self.group)
        return {"weights": weights, "group": group}

    def splits(self, kind: str, k: int) -> list[int]:
        """The K-splits the search may take for a stage: those that cut K into whole column blocks
        of the stage's weights format (only 1, where K-split is off)."""
        splits = valid_splits(kind, k, block=column_block(**self.fmt(kind)))
        return splits if self.allow_ksplit else [s for s in splits if s == 1]

    def options(self, kind: str) -> list[LinearTiling]:
        n, k = self.shapes[kind]
        splits = self.splits(kind, k)
        out = []
        for s in splits:
            for wpr in (1, 2, 4, 8):
                cr = self.tiling(kind, n, k, 1, s, wpr).chunk_rows
                for c in CHUNK_COUNTS:
                    rows = cr * c
                    if rows >= n + cr:
                        break
                    t = self.tiling(kind, n, k, rows, s, wpr)
                    if tiling_ok(kind, t) is None:
                        out.append(t)
        return out

    def tiling(self, kind: str, n: int, k: int, rows: int, ksplit: int, warps_per_row: int) -> LinearTiling:
        return LinearTiling(n, k, rows, ksplit, warps_per_row, self.batched, tiled_weights(self.deploy),
                            **self.fmt(kind))

    def initial(self, stage_target: int) -> dict:
        """Per kind: the smallest K-split whose chunk fits beside the hidden-size activation
        chunk, the fewest warps per row whose chunk fits `stage_target`, and the rows that
        balance the stage's tasks over the SMs (by the cost model's per-task estimate)."""
        m, gpu = self.model, self.deploy.gpu
        H = m.hidden_size
        tilings = {}
        share = gpu.read_bandwidth / gpu.sms
        for kind, (n, k) in self.shapes.items():
            splits = self.splits(kind, k)
            s = next((x for x in splits if k // x <= H), splits[-1])
            wpr = fitting_wpr(n, k, s, self.batched, stage_target, **self.fmt(kind))
            if self.weights != "bf16" and self.tiling(kind, n, k, 1, s, wpr).chunk_bytes > stage_target:
                # 8-bit chunks are whole 64-column blocks, so a K-chunk of an odd number of blocks
                # has no finer cut (a chunk of 16 rows x 37 blocks is 37 KB): the next K-split whose
                # chunk fits the target, if one does
                for s2 in splits[splits.index(s) + 1:]:
                    w2 = fitting_wpr(n, k, s2, self.batched, stage_target, **self.fmt(kind))
                    if self.tiling(kind, n, k, 1, s2, w2).chunk_bytes <= stage_target:
                        s, wpr = s2, w2
                        break
            cr = self.tiling(kind, n, k, 1, s, wpr).chunk_rows
            best = None
            for c in CHUNK_COUNTS:
                rows = cr * c
                if rows >= n + cr:
                    break
                t = self.tiling(kind, n, k, rows, s, wpr)
                rounds = -(-t.tasks // gpu.sms)
                est = rounds * (t.rows_bytes(rows) / share + self.constants.task_overhead_s + self.constants.stage_fixed_s)
                if best is None or est < best[0] * (1 - 1e-9):
                    best = (est, t)
            tilings[kind] = best[1]
        return tilings

    def retarget(self, tilings: dict, target: int) -> dict:
        """Every stage's chunk re-cut to fit `target` bytes (the fewest warps per row that fit),
        rows rounded up to whole chunks: the global move that changes the ring slot size."""
        out = {}
        for kind, t in tilings.items():
            wpr = fitting_wpr(t.n, t.k, t.ksplit, self.batched, target, **self.fmt(kind))
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
            splits = self.splits(kind, k)
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
        model, whose SMs all stream at one rate, predicts both cuts equal, but the finer cut runs
        faster. See docs/experiments.md, "Covering: at least one task per SM for the heaviest
        stage"."""
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
        which leaves out where the list scheduler puts the attention tasks. Twice the splits is
        skipped where it gives more attention tasks than SMs: two tasks on one SM run one after
        the other. More splits than the kernel takes (ATTN_SPLITS' largest, validate) are
        evaluated but never taken. See docs/experiments.md, "Attention splits rechecked on the full
        schedule"."""
        best_c, best_p = cand, plan
        groups = self.deploy.batch * self.model.num_key_value_heads
        for a in (cand.attn_splits // 2, cand.attn_splits * 2):
            if a < 1 or a * groups > self.deploy.gpu.sms:
                continue
            c, p = self.with_splits(cand.tilings, a)
            if c.time < best_c.time and a <= max(ATTN_SPLITS):  # the kernel takes 1..32 splits
                best_c, best_p = c, p
        return best_c, best_p

    def baselines(self) -> list[tuple[Candidate, Plan]]:
        """The round-robin plan (baseline.round_robin_plan), as the search's, with its simulated
        time: the search never returns a plan predicted slower than the baseline."""
        try:
            rr = round_robin_plan(self.model, self.deploy)
        except PlanError:
            return []
        rr = dataclasses.replace(rr, strategy="search")
        t_rr = simulate(rr, self.cost_of(rr)).predicted_s
        return [(Candidate(dict(rr.tilings), rr.attn_splits, rr.stages, t_rr, rr.smem_bytes, True), rr)]

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
            raise PlanError(f"{self.model.name} on {self.deploy.gpu.name} batch {self.deploy.batch}: no tiling fits"
                            f" {self.limit} bytes of shared memory with a 2-deep stream ring")
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


def search_plan(model: ModelConfig, deploy: DeployConfig, *, allow_ksplit: bool = True,
                smem_limit: int | None = None, constants: CostConstants | None = None,
                context: int | None = None, progress: Progress | None = None) -> Plan:
    """The searched plan for (model, deploy): tilings, attention splits, ring depth and the
    static per-SM order minimising the predicted step time (then shared memory). Deterministic.

    progress: a callback (message, fraction), told "done" at the end."""
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
