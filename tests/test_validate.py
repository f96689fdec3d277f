"""The validator refuses hand-made broken plans with the reason, and accepts good ones."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ada_mk.config import load_config
from ada_mk.search.deps import task_deps
from ada_mk.search.plan import LinearTiling, Run, Task, compress_runs
from ada_mk.search.search import search_plan
from ada_mk.search.errors import PlanError
from ada_mk.search.planner import make_plan
from ada_mk.search.validate import validate_plan

ROOT = Path(__file__).resolve().parents[1]


def small(gpu: str = "L20", layers: int = 2, batch: int = 1):
    m, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu=gpu, batch=batch)
    return dataclasses.replace(m, num_hidden_layers=layers, name=f"llama3.2-1b-{layers}l"), d


def rr_plan(**kw):
    m, d = small(**kw)
    return make_plan(m, d)


def with_lists(plan, lists):
    return dataclasses.replace(plan, schedule=[compress_runs(lst) for lst in lists])


def lists_of(plan):
    return [plan.sm_tasks(s) for s in range(plan.sms)]


@pytest.mark.parametrize("gpu", ["L20", "H100"])
@pytest.mark.parametrize("batch", [1, 4])
def test_good_plans_pass(gpu, batch):
    m, d = small(gpu=gpu, batch=batch)
    validate_plan(make_plan(m, d))
    validate_plan(search_plan(m, d))


def test_duplicate_task_is_a_double_write():
    p = rr_plan()
    lists = lists_of(p)
    lists[1].append(lists[0][0])
    with pytest.raises(PlanError, match="twice"):
        validate_plan(with_lists(p, lists))


def test_missing_task_is_a_missing_write():
    p = rr_plan()
    lists = lists_of(p)
    victim = next(t for t in lists[3] if t.kind == "down")
    lists[3].remove(victim)
    with pytest.raises(PlanError, match="never scheduled"):
        validate_plan(with_lists(p, lists))


def test_task_outside_the_stage_is_refused():
    p = rr_plan()
    sched = [list(runs) for runs in p.schedule]
    sched[0].append(Run("o", 0, p.tasks_of("o"), 1, 1))
    with pytest.raises(PlanError, match="outside"):
        validate_plan(dataclasses.replace(p, schedule=sched))


def test_misorder_on_one_sm_deadlocks():
    """A consumer placed before its producer on the same SM waits forever."""
    p = rr_plan()
    lists = lists_of(p)
    # Put every task on SM 0 in reverse topological order.
    everything = [t for lst in lists for t in lst]
    order = {t: i for i, t in enumerate(p.all_tasks())}
    everything.sort(key=lambda t: -order[t])
    lists = [everything] + [[] for _ in range(p.sms - 1)]
    with pytest.raises(PlanError, match="deadlock"):
        validate_plan(with_lists(p, lists))


def test_single_swap_misorder_deadlocks():
    p = rr_plan()
    lists = lists_of(p)
    # attn task 0 of layer 0 and one QKV task it needs, both moved to SM 5 in the wrong order.
    y = Task("attn", 0, 0)
    dep = task_deps(p, y)[0]
    x = Task("qkv", 0, dep.first * p.tilings["qkv"].ksplit)
    for lst in lists:
        for t in (x, y):
            if t in lst:
                lst.remove(t)
    lists[5] = [y, x] + lists[5]
    with pytest.raises(PlanError, match="deadlock"):
        validate_plan(with_lists(p, lists))


def test_cycle_across_sms_deadlocks():
    p = rr_plan()
    lists = lists_of(p)
    m = p.model
    ns, ks = p.attn_splits, p.tilings["qkv"].ksplit
    y1 = Task("attn", 0, 0)  # group 0
    y2 = Task("attn", 0, (m.num_key_value_heads - 1) * ns)  # the last group
    x1 = Task("qkv", 0, task_deps(p, y1)[0].first * ks)
    x2 = Task("qkv", 0, task_deps(p, y2)[0].first * ks)
    assert x1 != x2
    for lst in lists:
        for t in (x1, x2, y1, y2):
            if t in lst:
                lst.remove(t)
    lists[0] = [y1, x2] + lists[0]  # y1 waits for x1 (behind y2 on SM 1) ...
    lists[1] = [y2, x1] + lists[1]  # ... y2 waits for x2 (behind y1 on SM 0)
    with pytest.raises(PlanError, match="deadlock"):
        validate_plan(with_lists(p, lists))


def test_too_much_shared_memory():
    p = rr_plan()
    with pytest.raises(PlanError, match="shared memory"):
        validate_plan(dataclasses.replace(p, stages=64))


def test_ring_slot_smaller_than_a_chunk():
    p = rr_plan()
    with pytest.raises(PlanError, match="stage_bytes"):
        validate_plan(dataclasses.replace(p, stage_bytes=p.stage_bytes // 2))


@pytest.mark.parametrize("change, match", [
    (dict(rows=13), "multiple"),
    (dict(ksplit=3), "ksplit"),
    (dict(warps_per_row=3), "warps_per_row"),
])
def test_bad_tiling(change, match):
    p = rr_plan()
    til = dict(p.tilings)
    til["gate_up"] = dataclasses.replace(til["gate_up"], **change)
    with pytest.raises(PlanError, match=match):
        validate_plan(dataclasses.replace(p, tilings=til))


def test_tiling_batched_flag_follows_the_batch():
    """A batch-4 plan's tilings describe the batched multiply's 16-row chunks; one that does not
    would lay the ring out differently from the kernel (adamk/tasks.cuh, Tiling)."""
    p = rr_plan(batch=4)
    assert all(t.batched and t.chunk_rows == 16 for t in p.tilings.values())
    validate_plan(p)
    til = dict(p.tilings)
    til["o"] = dataclasses.replace(til["o"], batched=False)
    with pytest.raises(PlanError, match="o: tiling batched=False, but batch 4"):
        validate_plan(dataclasses.replace(p, tilings=til))


@pytest.mark.parametrize("gpu", ["H100", "L20"])
def test_weights_tiled_where_the_bulk_ring_is(gpu):
    """The batched multiply's weights are packed tiled exactly where bulk copies fill the ring
    (Hopper), as the kernel reads them (adamk/tasks.cuh, TILED_WEIGHTS); a ring slot is one chunk
    either way. A plan that says otherwise is refused."""
    p = rr_plan(gpu=gpu, batch=4)
    assert all(t.tiled == p.bulk_ring == (gpu == "H100") for t in p.tilings.values())
    assert all(t.stage_bytes == 16 * t.chunk_cols * 2 for t in p.tilings.values())
    validate_plan(p)
    til = dict(p.tilings)
    til["o"] = dataclasses.replace(til["o"], tiled=not til["o"].tiled)
    with pytest.raises(PlanError, match="o: weights"):
        validate_plan(dataclasses.replace(p, tilings=til))


def test_split_lm_head_refused():
    p = rr_plan()
    til = dict(p.tilings)
    t = til["lm_head"]
    til["lm_head"] = LinearTiling(t.n, t.k, t.rows, 2, t.warps_per_row)
    with pytest.raises(PlanError, match="LM head"):
        validate_plan(dataclasses.replace(p, tilings=til))


def test_attn_splits_range():
    p = rr_plan()
    with pytest.raises(PlanError, match="attn_splits"):
        validate_plan(dataclasses.replace(p, attn_splits=33))


def test_wrong_sm_count():
    p = rr_plan()
    with pytest.raises(PlanError, match="SM lists"):
        validate_plan(dataclasses.replace(p, schedule=p.schedule[:-1]))
