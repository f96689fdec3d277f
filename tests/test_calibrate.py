"""`adamk-tune --calibrate`: cost constants fitted to profiled steps (ada_mk.search.calibrate).

The profiles here are synthetic: the step as the simulator plays it with known constants ("the
card"), written in the raw layout an instrumented kernel writes, with its plan's recipe. The fit
starts from the GPU's built-in constants and must find the card's: the latencies it reads
directly exactly, the streaming rate and per-task overhead closely, and the step's span."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ada_mk.cli.tune import main as tune_main
from ada_mk.config import load_config
from ada_mk.search import cost
from ada_mk.search.calibrate import CalibrationError, fit_constants, predicted_vs_measured, profiled_step
from ada_mk.search.cost import CostModel, constants_for, load_calibration, simulate
from ada_mk.search.plan import LINEAR_KINDS
from ada_mk.search.planner import make_plan
from ada_mk.search.profile import profile_meta, save_profile

from test_cli_errors import runner  # tests/ is on sys.path (rootdir import)

ROOT = Path(__file__).resolve().parents[1]
SMOL = ROOT / "configs" / "smollm2-135m.yaml"
CONTEXT = 512


def card_constants(base: cost.CostConstants, rng: np.random.Generator) -> cost.CostConstants:
    """A card that differs from the built-in constants by random factors."""
    f = lambda: float(rng.uniform(0.6, 1.6))  # noqa: E731
    return dataclasses.replace(base, sync_latency_s=base.sync_latency_s * f(), stage_fixed_s=base.stage_fixed_s * f(),
                               task_overhead_s=base.task_overhead_s * f(),
                               stream_efficiency=min(1.0, base.stream_efficiency * f()),
                               attn_fixed_s=base.attn_fixed_s * f())


def synthetic_times(plan, card: cost.CostConstants, t0: int = 1_700_000_000_000) -> np.ndarray:
    """The step as simulated with the card's constants, as [sms][tasks][4] globaltimer ns: wait,
    inputs ready, input staged (staging where the SM's previous task staged another chunk), end."""
    cm = CostModel(plan, card, CONTEXT)
    sim = simulate(plan, cm)
    rec = {t: i for i, t in enumerate(sim.tasks)}
    times = np.zeros((plan.sms, max(len(plan.sm_tasks(s)) for s in range(plan.sms)), 4), np.uint64)
    for sm in range(plan.sms):
        prev = None
        for j, t in enumerate(plan.sm_tasks(sm)):
            i = rec[t]
            staged = sim.start[i]
            if t.kind in LINEAR_KINDS:
                key = (t.kind, t.layer, t.index % plan.tilings[t.kind].ksplit)
                staged += 0.0 if key == prev else cm.stage_time(t.kind, t.layer)
                prev = key
            else:
                prev = None
            times[sm, j] = [t0 + int(x * 1e9) for x in (sim.wait[i], sim.start[i], staged, sim.end[i])]
    return times


def write_profile(path: Path, plan, times, base, **meta_over) -> Path:
    meta = profile_meta(plan, SMOL, CONTEXT, base, card="Test Card", date="2026-12-08", commit="abc1234")
    meta.update(meta_over)
    save_profile(path, plan, times, meta)
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    m, d = load_config(SMOL, gpu="H100", batch=1)
    plan = make_plan(m, d)
    base = constants_for(d.gpu)
    card = card_constants(base, np.random.default_rng())
    path = write_profile(tmp_path_factory.mktemp("prof") / "profile.npz", plan, synthetic_times(plan, card), base)
    step = profiled_step(path)
    return plan, base, card, step, fit_constants([step], base)


def test_the_profile_rebuilds_its_plan(case):
    plan, _, _, step, _ = case
    assert step.plan.kernel_name == plan.kernel_name and step.card == "Test Card" and step.context == CONTEXT
    assert len(step.measured) == len(plan.all_tasks())


def test_the_fit_finds_the_cards_constants(case):
    _, base, card, step, fit = case
    assert fit.sync_latency_s == pytest.approx(card.sync_latency_s, rel=0.02)  # read directly
    assert fit.stage_fixed_s == pytest.approx(card.stage_fixed_s, rel=0.02)
    assert fit.stream_efficiency == pytest.approx(card.stream_efficiency, rel=0.1)
    pred, meas = predicted_vs_measured(step, fit)
    assert pred == pytest.approx(meas, rel=0.01)
    assert "fitted to 1 profiled steps on Test Card" in fit.source and fit.gpu == base.gpu


def test_cli_writes_the_constants_the_search_then_uses(case, tmp_path, monkeypatch):
    plan, base, card, step, _ = case
    monkeypatch.setattr(cost, "CALIBRATION_DIR", tmp_path / "calibration")
    path = write_profile(tmp_path / "p.npz", plan, synthetic_times(plan, card), base)
    r = runner().invoke(tune_main, ["--calibrate", str(path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "calibration" / "H100.json").read_text())
    assert doc["card"] == "Test Card" and doc["commit"] == "abc1234" and len(doc["steps"]) == 1
    s = doc["steps"][0]
    assert s["kernel"] == plan.kernel_name and s["predicted_us"] == pytest.approx(s["measured_us"], rel=0.01)
    used = constants_for(plan.deploy.gpu)
    assert used == load_calibration(tmp_path / "calibration" / "H100.json")
    assert used.sync_latency_s == pytest.approx(card.sync_latency_s, rel=0.02)
    assert constants_for(load_config(SMOL, gpu="H200", batch=1)[1].gpu) is cost.COSTS["H200"]  # other GPUs keep theirs


def test_profiles_that_cannot_be_fitted_get_one_line_errors(case, tmp_path):
    plan, base, card, _, _ = case
    times = synthetic_times(plan, card)
    bare = tmp_path / "bare.npz"
    save_profile(bare, plan, times)  # no recipe
    with pytest.raises(CalibrationError, match="lacks its plan's recipe"):
        profiled_step(bare)
    (tmp_path / "junk.npz").write_bytes(b"not a profile")
    with pytest.raises(CalibrationError, match="junk.npz: cannot read the profile"):
        profiled_step(tmp_path / "junk.npz")
    moved = write_profile(tmp_path / "moved.npz", plan, times, base, batch=4)  # another plan's recipe
    with pytest.raises(CalibrationError, match="profile of kernel"):
        profiled_step(moved)
    r = runner().invoke(tune_main, ["--calibrate", str(bare)])
    assert r.exit_code == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("adamk-tune: error: ") and "bare.npz" in r.stderr
    bad = tmp_path / "H100.json"
    bad.write_text('{"constants": {"gpu": "H100"}}')
    with pytest.raises(CalibrationError, match="H100.json: not a calibration file"):
        load_calibration(bad)
