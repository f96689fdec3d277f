"""Plan validation, before any code is generated: a plan the kernel would run wrongly, or hang on,
is refused with the reason (PlanError).

Checked:
  * tilings: shapes match the model, rows a multiple of the chunk rows, K-splits cut K into
    multiples of 8, the LM head unsplit, warps per row in 1/2/4/8; attention splits in 1..32;
  * shared memory: the ring slot holds every stage's chunk, at least 2 slots, the block's total
    within the GPU's per-block limit;
  * kernel features (kernel_rules): each recorded value one the kernel can run with this plan
    (bulk copies only on a GPU that has them, weights tiled as the kernel reads them, each stage in
    the deployment's weights format, 8-bit stages tiled in whole column blocks, K/V rows
    through the ring only where a slot holds them and the split fits the slots, K/V pieces only in
    the space they borrow, polled attention combines only on a schedule that allows them);
  * the schedule: one list per SM, well-formed runs, every task of the step exactly once (each
    output tile / K-split partial written once, none missing);
  * counters: each counter is bumped exactly per_step times per step by its producers, and every
    dependency names existing counters with that same target;
  * deadlock freedom: the per-SM lists are run against the dependency rule (cost.simulate); if
    some SM can never proceed (a task waiting on one scheduled after it on the same SM, or a
    cycle across SMs) the plan is refused. Lists that follow the step's stage order cannot
    deadlock and are not run (_in_stage_order).
"""
from __future__ import annotations

from collections import Counter

from ..config.deploy import stage_format
from .cost import CostModel, Deadlock, simulate
from .dag import Dag
from .deps import task_signal
from .errors import PlanError
from .kernel_rules import schedule_allows_polling, tiled_weights
from .plan import KERNEL_FEATURES, KIND_IDS, LINEAR_KINDS, THREADS, WARPS, Plan, Task
from .shapes import linear_shapes, tiling_ok
from .smem import required_stage_bytes


def _check_tilings(plan: Plan) -> None:
    shapes = linear_shapes(plan.model)
    if set(plan.tilings) != set(LINEAR_KINDS):
        raise PlanError(f"tilings for {sorted(plan.tilings)}; expected {list(LINEAR_KINDS)}")
    for kind, (n, k) in shapes.items():
        t = plan.tilings[kind]
        if (t.n, t.k) != (n, k):
            raise PlanError(f"{kind}: tiling is for a {t.n} x {t.k} matrix, the model's is {n} x {k}")
        why = tiling_ok(kind, t)
        if why:
            raise PlanError(f"{kind}: {why}")
    if not 1 <= plan.attn_splits <= 32:
        raise PlanError(f"attn_splits {plan.attn_splits} outside 1..32")
    if plan.threads != THREADS:
        raise PlanError(f"threads {plan.threads}; the kernel is written for {THREADS}")


def _check_smem(plan: Plan) -> None:
    need = required_stage_bytes(plan.tilings)
    if plan.stage_bytes < need:
        raise PlanError(f"stage_bytes {plan.stage_bytes} < {need}, the largest chunk of any stage")
    if plan.stage_bytes % 16:
        raise PlanError(f"stage_bytes {plan.stage_bytes} not a multiple of 16 (cp.async granularity)")
    if plan.stages < 2:
        raise PlanError(f"a {plan.stages}-slot stream ring; the pipeline needs at least 2")
    limit = plan.deploy.gpu.smem_per_block
    if plan.smem_bytes > limit:
        lay = plan.smem_layout()
        raise PlanError(
            f"needs {plan.smem_bytes} bytes of shared memory per block, {plan.deploy.gpu.name} allows {limit}"
            f" (ring {plan.stages} x {plan.stage_bytes}, activation {plan.x_bytes}, attention {plan.attn_bytes},"
            f" layout {lay})")


def _check_features(plan: Plan) -> None:
    """The kernel features recorded in the plan are ones the kernel can run (kernel_rules decides
    them; these are the constraints of adamk/*.cuh that a hand-made value could break)."""
    undecided = [name for name in KERNEL_FEATURES if getattr(plan, name) is None]
    if undecided:
        raise PlanError(f"kernel features {undecided} not decided (kernel_rules.decide_kernel_features)")
    m, gpu = plan.model, plan.deploy.gpu
    if plan.batched and plan.batch > 8:
        raise PlanError(f"batched multiply at batch {plan.batch}: an MMA holds 8 sequences")
    if plan.bulk_ring and not gpu.tma:
        raise PlanError(f"bulk_ring: {gpu.name} has no bulk-copy unit (TMA) to fill the ring with")
    for kind, t in plan.tilings.items():
        if t.batched != plan.batched:
            raise PlanError(f"{kind}: tiling batched={t.batched}, but batch {plan.batch} "
                            f"{'multiplies' if plan.batched else 'does not multiply'} sequences together")
        want = stage_format(kind, plan.weights, plan.weights_group)
        if (t.weights, t.group) != want:
            raise PlanError(f"{kind}: tiling streams {t.weights} weights with scale group {t.group}; the deployment's"
                            f" are {want[0]} with group {want[1]} (deploy.weights, weights_group)")
        if t.quantized and not t.tiled:
            raise PlanError(f"{kind}: {t.weights} weights not tiled; 8-bit weights are always tiled (each chunk"
                            f" carries its codes and scales, docs/quantized-weights.md)")
        if t.quantized and not t.whole_column_blocks:
            raise PlanError(f"{kind}: {t.weights} chunks of {t.chunk_cols} columns (K-chunk {t.kc}) are not whole"
                            f" {t.column_block}-column blocks")
        if t.tiled != tiled_weights(plan.deploy):
            raise PlanError(f"{kind}: weights {'tiled' if t.tiled else 'not tiled'}; the kernel reads them tiled"
                            f" exactly where bulk copies fill the batched multiply's ring (Plan.bulk_ring)"
                            f" or the weights are 8-bit")
    p, slots = plan.kv_ring_positions, plan.kv_ring_slots
    if plan.kv_ring:
        if not plan.bulk_ring:
            raise PlanError("kv_ring: K/V rows come through the ring only where bulk copies fill it (bulk_ring)")
        if m.head_dim % 64 or m.group_size > 8:
            raise PlanError(f"kv_ring: the ring's K/V rows are multiplied by MmaAttention, which takes heads of"
                            f" 64 or 128 dimensions and up to 8 query heads a group, not {m.head_dim} and"
                            f" {m.group_size}")
        if p % 16 or not 16 <= p <= 16 * WARPS or 4 * p * m.head_dim > plan.stage_bytes:
            raise PlanError(f"kv_ring_positions {p}: a slot of {plan.stage_bytes} B holds whole blocks of 16"
                            f" positions' K and V rows, at most {16 * WARPS}")
        longest = -(-plan.deploy.max_context // plan.attn_splits)
        if slots * p < longest:
            raise PlanError(f"kv_ring_slots {slots} of {p} positions: a split holds up to {longest} positions")
    elif p or slots:
        raise PlanError(f"kv_ring_positions {p}, kv_ring_slots {slots} without kv_ring: both 0")
    pieces = plan.kv_pieces
    if len(pieces) != 2 or (pieces[0] == 0) != (pieces[1] == 0):
        raise PlanError(f"kv_pieces {pieces}: (positions, buffers), both 0 or neither")
    if pieces[1]:
        positions, buffers = pieces
        if not gpu.tma:
            raise PlanError(f"kv_pieces: {gpu.name} has no bulk-copy unit (TMA) to copy K/V pieces with")
        if plan.kv_ring:
            raise PlanError("kv_pieces with kv_ring: attention's K/V rows come one way")
        if positions % 16 or positions > 16 * WARPS:
            raise PlanError(f"kv_pieces: {positions} positions a piece; whole blocks of 16, at most {16 * WARPS}")
        need = buffers * 2 * positions * m.head_dim * 2
        if need > plan.kv_region_bytes:
            raise PlanError(f"kv_pieces: {buffers} buffers of {positions} positions need {need} B, the x and"
                            f" red regions they borrow hold {plan.kv_region_bytes}")


def _check_polling(plan: Plan) -> None:
    """A polled attention combine (attn_polled) only on a schedule where it cannot deadlock."""
    if plan.attn_polled and not schedule_allows_polling(plan):
        raise PlanError("attn_polled: a combiner of some layer runs before another attention task it waits"
                        " for on its SM, or the lists leave the stage order (kernel_rules.schedule_allows_polling)")


def _check_schedule(plan: Plan, want: list[Task]) -> None:
    """`want`: plan.all_tasks()."""
    if plan.sms != plan.deploy.gpu.sms:
        raise PlanError(f"plan for {plan.sms} SMs; {plan.deploy.gpu.name} has {plan.deploy.gpu.sms}")
    if len(plan.schedule) != plan.sms:
        raise PlanError(f"schedule has {len(plan.schedule)} SM lists; the plan has {plan.sms} SMs")
    L = plan.model.num_hidden_layers
    for sm, runs in enumerate(plan.schedule):
        for r in runs:
            if r.kind not in KIND_IDS:
                raise PlanError(f"SM {sm}: run of unknown kind {r.kind!r}")
            if r.count < 1 or (r.count > 1 and r.stride < 1):
                raise PlanError(f"SM {sm}: malformed run {r} (count >= 1, stride >= 1)")
            last_layer = 0 if r.kind in ("lm_head", "argmax") else L - 1
            if not 0 <= r.layer <= last_layer:
                raise PlanError(f"SM {sm}: run {r} names layer {r.layer} (0..{last_layer})")
            n = plan.tasks_of(r.kind)
            if r.start < 0 or r.start + (r.count - 1) * r.stride >= n:
                raise PlanError(f"SM {sm}: run {r} names task indices outside 0..{n - 1} of {r.kind}")
    # Tasks as (kind, layer, index) tuples, Task's identity (cheaper to count than Task objects).
    seen = Counter((r.kind, r.layer, r.start + i * r.stride) for runs in plan.schedule for r in runs
                   for i in range(r.count))
    dups = [t for t, c in seen.items() if c > 1]
    if dups:
        t = min(dups, key=lambda t: (t[1], KIND_IDS[t[0]], t[2]))
        raise PlanError(f"task {t[0]}[{t[2]}] of layer {t[1]} scheduled {seen[t]} times: its output tile"
                        f" would be written twice ({len(dups)} duplicated task(s))")
    if len(seen) != len(want):  # the range checks above leave no other way for a task to be missing
        missing = [t for t in want if (t.kind, t.layer, t.index) not in seen]
        if missing:
            t = missing[0]
            raise PlanError(f"task {t.kind}[{t.index}] of layer {t.layer} is never scheduled: its output tile"
                            f" would never be written ({len(missing)} missing task(s))")
        raise PlanError(f"{len(seen)} distinct tasks scheduled; the step has {len(want)}")  # kept as a guard


def _check_counters(plan: Plan, dag: Dag, tasks: list[Task]) -> None:
    """Each counter receives exactly per_step bumps from `tasks` (all of the step's); every
    dependency waits for that target."""
    bumps = Counter(task_signal(plan, t) for t in tasks)
    bumps.pop(None, None)  # argmax bumps none
    m = plan.model
    sizes = {"attn": plan.batch * m.num_key_value_heads}
    per_step = {"attn": plan.attn_splits}
    for k in LINEAR_KINDS:
        sizes[k] = plan.tilings[k].tiles
        per_step[k] = plan.tilings[k].ksplit
    for (stage, layer, i), c in bumps.items():
        if not 0 <= i < sizes[stage]:
            raise PlanError(f"counter {stage}[{i}] of layer {layer} does not exist ({sizes[stage]} counters)")
        if c != per_step[stage]:
            raise PlanError(f"counter {stage}[{i}] of layer {layer} is bumped {c} times per step, its consumers"
                            f" wait for {per_step[stage]}")
    L = m.num_hidden_layers
    for layer in range(L):
        for stage in ("qkv", "attn", "o", "gate_up", "down"):
            for i in range(sizes[stage]):
                if bumps[(stage, layer, i)] != per_step[stage]:
                    raise PlanError(f"counter {stage}[{i}] of layer {layer} is bumped {bumps[(stage, layer, i)]}"
                                    f" times per step, its consumers wait for {per_step[stage]}")
    # Dependencies: one representative per task class (they repeat per layer).
    for kind in ("qkv", "attn", "o", "gate_up", "down", "lm_head", "argmax"):
        for layer in ((0, 1) if kind == "qkv" and L > 1 else (0,)):
            for idx in range(plan.tasks_of(kind)):
                for stage, dl, first, count, per in dag.deps_of(kind, layer, idx):
                    if per != per_step[stage]:
                        raise PlanError(f"{kind}[{idx}] waits for {stage} counters to reach {per}, they reach"
                                        f" {per_step[stage]}")
                    if first < 0 or count < 1 or first + count > sizes[stage]:
                        raise PlanError(f"{kind}[{idx}] waits on {stage} counters {first}..{first + count - 1}"
                                        f" of {sizes[stage]}")


def _in_stage_order(plan: Plan, dag: Dag) -> bool:
    """Whether the schedule cannot deadlock by construction (the search's list scheduler makes such
    schedules): every dependency names counters of an earlier stage (in the order layer by layer,
    QKV to down, then the LM head and argmax), and every SM's tasks follow that order. Then the
    SM whose next task comes earliest in that order can always run it: the producers its counters
    wait for (_check_counters: each counter's bumps all come from its own stage) all sit at or
    before the SMs' next tasks, and those are not earlier than it, so they have all run."""
    L = plan.model.num_hidden_layers

    def position(kind: str, layer: int) -> tuple[int, int]:
        return (L if kind in ("lm_head", "argmax") else layer, KIND_IDS[kind])

    for kind in KIND_IDS:  # deps_of repeats from layer 1 on, shifted (as _check_counters assumes)
        for layer in ((0, 1) if kind not in ("lm_head", "argmax") and L > 1 else (0,)):
            for idx in range(plan.tasks_of(kind)):
                for stage, dep_layer, *_ in dag.deps_of(kind, layer, idx):
                    if position(stage, dep_layer) >= position(kind, layer):
                        return False
    return plan.in_stage_order


def validate_plan(plan: Plan, *, simulate_deadlock: bool = True) -> None:
    """Raise PlanError with the reason when the plan is not one the kernel can run correctly."""
    _check_tilings(plan)
    _check_features(plan)
    _check_smem(plan)
    tasks = plan.all_tasks()
    _check_schedule(plan, tasks)
    _check_polling(plan)
    dag = Dag(plan)
    _check_counters(plan, dag, tasks)
    if simulate_deadlock and not _in_stage_order(plan, dag):
        lists = [plan.sm_tasks(sm) for sm in range(plan.sms)]
        try:
            simulate(plan, CostModel(plan, dag=dag), per_sm=lists)
        except Deadlock as e:
            raise PlanError(str(e)) from None


__all__ = ["validate_plan"]
