"""Dependencies between tasks, at tile granularity: the specification the kernel implements.

Every producing task adds 1 to one counter when its output is written (release); a consumer waits
until each counter it needs reaches `per_step * epoch` (acquire). A dependency is therefore a range
of counters of one producer stage and the count each must reach per decode step.

Only direct inputs are listed; what they imply transitively is not repeated (a K-split task of the
O projection waits for its attention heads, which waited for the QKV rows, which waited for the
whole residual stream of the previous layer, so its residual read is covered).
"""
from __future__ import annotations

from dataclasses import dataclass

from .plan import Plan, Task


@dataclass(frozen=True)
class Dep:
    stage: str  # producer kind: "qkv", "attn", "o", "gate_up", "down", "lm_head"
    layer: int
    first: int  # first counter of the range
    count: int
    per_step: int  # each counter reaches per_step * epoch


def producer_per_step(plan: Plan, stage: str) -> int:
    """How often each counter of `stage` is bumped in one decode step: once per split. For an
    attention group, and for a K-split O or down tile (the residual stream), the last split to
    finish combines the splits and adds all the counts at once (adamk/attention.cuh,
    adamk/linear_stages.cuh finish_stream_split), so they are published only combined."""
    if stage == "attn":
        return plan.attn_splits
    return plan.tilings[stage].ksplit


def _tiles_over(plan: Plan, stage: str, layer: int, lo: int, hi: int) -> Dep:
    """The `stage` tiles covering output rows [lo, hi)."""
    t = plan.tilings[stage]
    first, last = lo // t.rows, (hi - 1) // t.rows
    return Dep(stage, layer, first, last - first + 1, producer_per_step(plan, stage))


def _all_tiles(plan: Plan, stage: str, layer: int) -> Dep:
    return Dep(stage, layer, 0, plan.tilings[stage].tiles, producer_per_step(plan, stage))


def task_deps(plan: Plan, task: Task) -> list[Dep]:
    m = plan.model
    hd, G = m.head_dim, m.group_size
    kind, layer, idx = task.kind, task.layer, task.index
    if kind == "qkv":
        return [] if layer == 0 else [_all_tiles(plan, "down", layer - 1)]
    if kind == "attn":
        g = (idx // plan.attn_splits) % m.num_key_value_heads
        q0 = g * G * hd
        k0 = m.q_size + g * hd
        v0 = m.q_size + m.kv_size + g * hd
        return [
            _tiles_over(plan, "qkv", layer, q0, q0 + G * hd),
            _tiles_over(plan, "qkv", layer, k0, k0 + hd),
            _tiles_over(plan, "qkv", layer, v0, v0 + hd),
        ]
    if kind == "o":
        t = plan.tilings["o"]
        lo, hi = t.k_range(idx % t.ksplit)
        g0, g1 = lo // (hd * G), (hi - 1) // (hd * G)
        nkv = m.num_key_value_heads
        # Attention counters are laid out [b][g]: one range per sequence of the batch.
        return [Dep("attn", layer, b * nkv + g0, g1 - g0 + 1, plan.attn_splits) for b in range(plan.batch)]
    if kind == "gate_up":
        return [_all_tiles(plan, "o", layer)]
    if kind == "down":
        t = plan.tilings["down"]
        lo, hi = t.k_range(idx % t.ksplit)
        return [_tiles_over(plan, "gate_up", layer, 2 * lo, 2 * hi)]  # gate and up rows interleaved
    if kind == "lm_head":
        return [_all_tiles(plan, "down", m.num_hidden_layers - 1)]
    if kind == "argmax":
        return [_all_tiles(plan, "lm_head", 0)]
    raise ValueError(f"unknown task kind {kind!r}")


def dep_classes(plan: Plan, kind: str) -> list[int]:
    """Per task index of `kind`: its dependency class. Tasks of one stage and layer in the same
    class have the same dependencies: task_deps reads a task's index only through it (an attention
    task's group, the K-chunk of an O or down task), so a scheduler resolves them once per class."""
    n = plan.tasks_of(kind)
    if kind == "attn":
        ns, nkv = plan.attn_splits, plan.model.num_key_value_heads
        return [(i // ns) % nkv for i in range(n)]
    if kind in ("o", "down"):
        ks = plan.tilings[kind].ksplit
        return [i % ks for i in range(n)]
    return [0] * n


def task_signal(plan: Plan, task: Task) -> tuple[str, int, int] | None:
    """The counter a task bumps when done: (stage, layer, index), or None for the last task. The
    splits of a tile (or attention group) share its counter. The kernel bumps the counters of a
    run's gate/up, LM head and unsplit O / down tiles together, after the last task of the run
    that feeds the same consumers (adamk/linear.cuh, publish_group): the tasks of such a run wait
    for the same inputs, so none waits for another and no dependency is added; the cost model
    still counts one bump per task. QKV tiles have no counter in the kernel: their words carry the
    step's epoch and attention polls them (adamk/attention.cuh, qkv_values), the same dependency."""
    if task.kind == "argmax":
        return None
    return (task.kind, task.layer, task.index // producer_per_step(plan, task.kind))
