"""Every choice that changes the generated kernel is a field of the plan: in plan.json, in the plan
hash, decided by ada_mk.search.kernel_rules, checked by the validator."""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest

from ada_mk.codegen.render import render
from ada_mk.config import load_config
from ada_mk.search.errors import PlanError
from ada_mk.search.kernel_rules import decide_kernel_features
from ada_mk.search.plan import KERNEL_FEATURES, Run
from ada_mk.search.planner import make_plan
from ada_mk.search.validate import validate_plan

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def rr(gpu: str = "H100", batch: int = 1, name: str = "llama3.2-1b"):
    """The round-robin plan (quick to make; its features follow the same rules as the search's)."""
    return make_plan(*load_config(ROOT / "configs" / f"{name}.yaml", gpu=gpu, batch=batch), strategy="round-robin")


def kernel_source(plan) -> str:
    """The rendered kernel (the file with the Cfg struct), with the plan's name and hash taken out
    so that only what the kernel does is compared."""
    files = render(plan).files
    (src,) = [text for text in files.values() if "struct Cfg" in text]
    return src.replace(plan.kernel_name, "KERNEL").replace(plan.plan_hash, "HASH")


def all_sources(plan) -> list[str]:
    files = render(plan).files
    return sorted(text.replace(plan.kernel_name, "KERNEL").replace(plan.plan_hash, "HASH") for text in files.values())


def _tiled_flip(p):
    til = dict(p.tilings)
    til["o"] = dataclasses.replace(til["o"], tiled=not til["o"].tiled)
    return dataclasses.replace(p, tilings=til)


# (feature, base plan (gpu, batch), the plan with that one field changed, whether the kernel file changes)
CHANGES = {
    "batched": (("H100", 1), lambda p: dataclasses.replace(p, batched=not p.batched), True),
    "bulk_ring": (("H100", 1), lambda p: dataclasses.replace(p, bulk_ring=not p.bulk_ring), True),
    "kv_ring": (("H100", 1), lambda p: dataclasses.replace(p, kv_ring=not p.kv_ring), True),
    "kv_ring_positions": (("H100", 1), lambda p: dataclasses.replace(p, kv_ring_positions=p.kv_ring_positions - 16), True),
    "kv_ring_slots": (("H100", 1), lambda p: dataclasses.replace(p, kv_ring_slots=p.kv_ring_slots + 1), True),
    "kv_pieces": (("H100", 1), lambda p: dataclasses.replace(p, kv_pieces=(32, 2)), True),
    "attn_polled": (("H100", 8), lambda p: dataclasses.replace(p, attn_polled=not p.attn_polled), True),
    # packed weights: the kernel reads them as BATCHED && BULK_RING say; the tiling's flag is the
    # layout's (the host code's plan JSON and the weight packing)
    "tiled": (("H100", 8), _tiled_flip, False),
}


def test_every_kernel_feature_has_a_change_test():
    assert set(CHANGES) == set(KERNEL_FEATURES) | {"tiled"}


@pytest.mark.parametrize("feature", sorted(CHANGES))
def test_one_field_changes_the_hash_and_the_kernel(feature):
    (gpu, batch), change, in_kernel = CHANGES[feature]
    base = rr(gpu, batch)
    other = change(base)
    assert base.plan_hash != other.plan_hash
    assert base.kernel_name != other.kernel_name and base.file_stem == other.file_stem
    a, b = base.to_json(), other.to_json()
    assert a != b and {k for k in a if a[k] != b[k]} <= {"kernel_features", "tilings", "smem_bytes"}
    if in_kernel:
        assert kernel_source(base) != kernel_source(other)
    else:
        assert all_sources(base) != all_sources(other)


@pytest.mark.parametrize("gpu,batch", [("H100", 1), ("H100", 8), ("L20", 1), ("L20", 4)])
def test_plans_carry_their_rules_decisions(gpu, batch):
    """A plan's recorded features are what the rules decide for it, and plan.json has them."""
    p = rr(gpu, batch)
    assert decide_kernel_features(p) == p
    doc = json.loads(json.dumps(p.to_json()))
    assert doc["kernel_features"] == {k: list(v) if isinstance(v, tuple) else v for k, v in p.kernel_features.items()}
    assert all(t["tiled"] == (p.batched and p.bulk_ring) and t["batched"] == p.batched for t in doc["tilings"].values())
    if not p.kv_ring:
        assert p.kv_ring_positions == p.kv_ring_slots == 0


def test_undecided_plan_has_no_hash():
    p = dataclasses.replace(rr(), attn_polled=None)
    with pytest.raises(ValueError, match="undecided"):
        p.plan_hash
    with pytest.raises(PlanError, match="not decided"):
        validate_plan(p)


def test_plan_json_digests_the_schedule():
    """plan.json names the schedule by its digest (the runs are the kernel's table); the hash still
    covers every run."""
    p = rr()
    doc = p.to_json()["schedule"]
    assert set(doc) == {"sha256", "runs", "tasks_per_sm"}
    assert doc["runs"] == sum(len(runs) for runs in p.schedule) and sum(doc["tasks_per_sm"]) == len(p.all_tasks())
    sched = [list(runs) for runs in p.schedule]
    r = sched[5][-1]
    sched[5][-1] = Run(r.kind, r.layer, r.start, r.stride, r.count)  # the same run: same digest
    assert dataclasses.replace(p, schedule=sched).to_json()["schedule"] == doc
    a, b = sched[0][0], sched[1][0]
    sched[0][0], sched[1][0] = b, a  # two SMs swap their first run
    q = dataclasses.replace(p, schedule=sched)
    assert q.to_json()["schedule"]["sha256"] != doc["sha256"] and q.plan_hash != p.plan_hash


def test_file_stem_is_the_kernel_name_without_the_hash():
    p = rr()
    assert p.file_stem == "adamk_llama3_2_1b_h100_bs1"
    assert p.kernel_name == f"{p.file_stem}_{p.plan_hash}"


# ---- the validator refuses feature values the kernel cannot run ------------------------------------

def test_bulk_ring_needs_the_bulk_copy_unit():
    with pytest.raises(PlanError, match="bulk_ring: L20"):
        validate_plan(dataclasses.replace(rr("L20"), bulk_ring=True))


def test_kv_ring_needs_the_bulk_ring_and_fitting_slots():
    p = rr("H100", 1)
    assert p.kv_ring
    validate_plan(p)
    with pytest.raises(PlanError, match="only where bulk copies fill it"):
        validate_plan(dataclasses.replace(p, bulk_ring=False))
    with pytest.raises(PlanError, match="kv_ring_positions"):
        validate_plan(dataclasses.replace(p, kv_ring_positions=p.kv_ring_positions + 8))
    with pytest.raises(PlanError, match="kv_ring_slots"):
        validate_plan(dataclasses.replace(p, kv_ring_slots=p.kv_ring_slots - 1))
    with pytest.raises(PlanError, match="without kv_ring"):
        validate_plan(dataclasses.replace(p, kv_ring=False))
    with pytest.raises(PlanError, match="kv_pieces with kv_ring"):
        validate_plan(dataclasses.replace(p, kv_pieces=(16, 2)))


def test_kv_pieces_fit_the_space_they_borrow():
    p = rr("H100", 8, "llama3-8b")
    assert not p.kv_ring and p.kv_pieces[1] >= 2
    validate_plan(p)
    with pytest.raises(PlanError, match="borrow"):
        validate_plan(dataclasses.replace(p, kv_pieces=(64, 64)))
    with pytest.raises(PlanError, match="both 0 or neither"):
        validate_plan(dataclasses.replace(p, kv_pieces=(64, 0)))
    with pytest.raises(PlanError, match="no bulk-copy unit"):
        validate_plan(dataclasses.replace(rr("L20", 4), kv_pieces=(16, 2)))


def test_polled_combine_needs_a_schedule_that_allows_it():
    """A combiner (the last split) placed before another split of its layer on the same SM would
    poll forever; the plan is refused when it says attn_polled, accepted with the atomic election."""
    p = rr("H100", 8)
    assert p.attn_polled
    last = p.attn_splits - 1
    sched = [list(runs) for runs in p.schedule]
    # SM 0 runs the combiner of group 0, layer 0 first, then split 0 of that group
    combiner, first = Run("attn", 0, last, 1, 1), Run("attn", 0, 0, 1, 1)
    for runs in sched:
        for i, r in enumerate(runs):
            tasks = [t for t in r.tasks() if not (t.kind == "attn" and t.layer == 0 and t.index in (0, last))]
            if len(tasks) != r.count:
                runs[i:i + 1] = [Run(t.kind, t.layer, t.index, 1, 1) for t in tasks]
    at = next(i for i, r in enumerate(sched[0]) if (r.layer, r.kind) != (0, "qkv"))  # after layer 0's QKV
    sched[0][at:at] = [combiner, first]
    bad = dataclasses.replace(p, schedule=sched)
    with pytest.raises(PlanError, match="attn_polled"):
        validate_plan(bad, simulate_deadlock=False)
    fixed = decide_kernel_features(bad)
    assert not fixed.attn_polled
    validate_plan(fixed, simulate_deadlock=False)


def test_a_one_field_change_reads_as_a_small_modification():
    """out/ keeps its file names when the plan changes, and a one-field change touches a few lines
    of the kernel: the Cfg constant, and the plan hash wherever it is named."""
    import difflib

    base = rr("H100", 1)
    other = dataclasses.replace(base, kv_ring=not base.kv_ring)
    a, b = render(base).files, render(other).files
    assert set(a) == set(b)
    cu = f"{base.file_stem}.cu"
    changed = [line for line in difflib.unified_diff(a[cu].splitlines(), b[cu].splitlines(), n=0)
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert 0 < len(changed) <= 20, changed
    inc = f"{base.file_stem}.schedule.inc"
    assert a[inc].replace(base.plan_hash, "HASH") == b[inc].replace(other.plan_hash, "HASH")
