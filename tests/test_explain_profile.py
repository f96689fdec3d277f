"""`--explain --profile`: measured task times (ada_mk.search.profile) beside the cost model's.

The synthetic profiles are the simulator's own prediction with noise, in the raw layout an
instrumented kernel writes ([sms][max_tasks][4] uint64 ns: wait, ready, staged, end)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ada_mk.codegen import pipeline
from ada_mk.config import load_config
from ada_mk.search import planner
from ada_mk.search.cost import simulate
from ada_mk.search.explain import MEASURED_PID, explain
from ada_mk.search.profile import (ProfileError, from_summary_rows, load_profile, measured_from_times,
                                   save_profile)

from test_cli_errors import SMOL, run  # tests/ is on sys.path (rootdir import)

ROOT = Path(__file__).resolve().parents[1]
REAL_1B = ROOT / "tests" / "data" / "profile-llama3.2-1b-search.npy"  # benchmarks/profile_step.py, H200


@pytest.fixture(scope="module")
def plan():
    m, d = load_config(SMOL)
    return planner.make_plan(m, d, strategy="round-robin")


def synthetic_times(plan, noise=0.1, seed=0, t0=1_700_000_000_000):
    """The prediction as globaltimer stamps, every duration scaled by 1 +- noise."""
    sim = simulate(plan)
    rng = np.random.default_rng(seed)
    rec = {t: i for i, t in enumerate(sim.tasks)}
    times = np.zeros((plan.sms, max(len(plan.sm_tasks(s)) for s in range(plan.sms)) + 3, 4), np.uint64)
    for sm in range(plan.sms):
        for j, t in enumerate(plan.sm_tasks(sm)):
            i = rec[t]
            f = 1 + noise * rng.uniform(-1, 1)
            w, s, e = sim.wait[i] * f, sim.start[i] * f, sim.end[i] * f
            times[sm, j] = [t0 + int(w * 1e9), t0 + int(s * 1e9), t0 + int((s + (e - s) / 4) * 1e9), t0 + int(e * 1e9)]
    return sim, times


def test_save_load_round_trip(plan, tmp_path):
    sim, times = synthetic_times(plan)
    save_profile(tmp_path / "profile.npz", plan, times)
    m = load_profile(tmp_path / "profile.npz", plan)
    assert m.kernel_name == plan.kernel_name and len(m) == len(plan.all_tasks())
    assert set(m) == set(plan.all_tasks())
    assert min(v[0] for v in m.times.values()) == 0.0
    for v in m.times.values():
        assert v[0] <= v[1] <= v[2] <= v[3]
    assert m.makespan_us == pytest.approx(sim.makespan * 1e6, rel=0.11)


def test_explain_with_profile_shows_both(plan, tmp_path):
    sim, times = synthetic_times(plan)
    save_profile(tmp_path / "profile.npz", plan, times)
    text = explain(plan, tmp_path / "ex", compare_unsplit=False, profile=tmp_path / "profile.npz")
    assert "predicted vs measured" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("makespan predicted vs measured"))
    assert f"{sim.makespan * 1e6:,.1f} us vs" in line and "%" in line
    for kind in ("qkv", "attn", "o", "gate_up", "down", "lm_head", "argmax"):
        assert any(ln.split()[:1] == [kind] and ln.count(" us") >= 3 for ln in text.splitlines()), kind
    assert (tmp_path / "ex" / "explain.txt").read_text() == text
    assert (tmp_path / "ex" / "gantt.png").stat().st_size > 1000
    assert (tmp_path / "ex" / "gantt_measured.png").stat().st_size > 1000

    trace = json.loads((tmp_path / "ex" / "trace.json").read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in trace if e.get("name") == "process_name"}
    pred = [e for e in trace if e["ph"] == "X" and e["pid"] < MEASURED_PID and e["tid"] == 0]
    meas = [e for e in trace if e["ph"] == "X" and e["pid"] >= MEASURED_PID and e["tid"] == 0]
    waits = [e for e in trace if e["ph"] == "X" and e["pid"] >= MEASURED_PID and e["tid"] == 1]
    assert len(pred) == len(meas) == len(plan.all_tasks())
    assert waits and all(e["name"] == "wait" for e in waits)
    assert {e["pid"] - MEASURED_PID for e in meas} == {e["pid"] for e in pred}
    assert names[MEASURED_PID] == "measured SM 0" and names[0] == "predicted SM 0"


def test_explain_without_profile_unchanged(plan, tmp_path):
    text = explain(plan, tmp_path, compare_unsplit=False, png=False)
    assert "measured" not in text
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert all(e["pid"] < MEASURED_PID for e in trace)


def test_other_kernels_profile_is_refused(plan, tmp_path):
    _, times = synthetic_times(plan)
    other = planner.make_plan(*load_config(SMOL, batch=2), strategy="round-robin")
    save_profile(tmp_path / "other.npz", other, np.zeros((other.sms, times.shape[1] * 2, 4), np.uint64))
    with pytest.raises(ProfileError, match=f"profile of kernel {other.kernel_name}, but the plan is {plan.kernel_name}"):
        load_profile(tmp_path / "other.npz", plan)
    with pytest.raises(ProfileError, match="shape"):
        save_profile(tmp_path / "x.npz", plan, times[:, :2])
    with pytest.raises(ProfileError, match="no time recorded"):
        measured_from_times(plan, np.zeros_like(times))


def test_cli_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "make_plan", lambda m, d: planner.make_plan(m, d, strategy="round-robin"))
    m, d = load_config(SMOL)
    plan = planner.make_plan(m, d, strategy="round-robin")
    _, times = synthetic_times(plan)
    save_profile(tmp_path / "profile.npz", plan, times)
    r = run("--config", SMOL, "--out", tmp_path / "o", "--no-build", "--explain", "--profile", tmp_path / "profile.npz")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "makespan predicted vs measured" in r.stdout
    assert (tmp_path / "o" / "smollm2-135m" / "H100-bs1" / "gantt_measured.png").exists()

    other = planner.make_plan(*load_config(SMOL, batch=2), strategy="round-robin")
    save_profile(tmp_path / "other.npz", other, synthetic_times(other)[1])
    r = run("--config", SMOL, "--out", tmp_path / "o", "--no-build", "--explain", "--profile", tmp_path / "other.npz")
    assert r.exit_code == 2 and "Traceback" not in r.stderr and r.stdout == ""
    last = r.stderr.splitlines()[-1]
    assert last.startswith("adamk-gen: error: ") and f"profile of kernel {other.kernel_name}" in last

    r = run("--config", SMOL, "--out", tmp_path / "o", "--no-build", "--profile", tmp_path / "profile.npz")
    assert r.exit_code == 2 and "--profile needs --explain" in r.stderr


@pytest.mark.skipif(not REAL_1B.exists(), reason="measured llama3.2-1b profile summary not present")
def test_summary_rows_of_a_real_step(tmp_path):
    """benchmarks/profile_step.py's summary of a real llama3.2-1b step (H200) converts for the plan
    it was taken from (the GPU tests' kernel), and not for another plan."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.gpu.kernels import model_for

    m, d = model_for("llama3.2-1b", "H100", 1, None)
    plan = planner.make_plan(m, d)
    if plan.kernel_name != "adamk_llama3_2_1b_h100_bs1_a1b27e8d89":
        pytest.skip(f"the search now plans {plan.kernel_name}, not the profiled kernel")
    rows = np.load(REAL_1B, allow_pickle=True)
    save_profile(tmp_path / "profile.npz", plan, from_summary_rows(plan, rows))
    meas = load_profile(tmp_path / "profile.npz", plan)
    assert len(meas) == len(rows) and 500 < meas.makespan_us < 2000
    assert load_profile(REAL_1B, plan).times == meas.times  # the .npy is read directly too
    text = explain(plan, tmp_path / "ex", compare_unsplit=False, png=False, profile=meas)
    assert "makespan predicted vs measured" in text
    rr = planner.make_plan(m, d, strategy="round-robin")
    with pytest.raises(ProfileError, match="another plan|task rows"):
        from_summary_rows(rr, rows)
