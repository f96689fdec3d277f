"""The measured chain of a layer (ada_mk.search.chain): hops and stage times from a profile, on a
hand-made step whose every number is known, and in `--explain --profile`'s report."""
from __future__ import annotations

import random

import pytest

from ada_mk.search.chain import CHAIN, chain_hops, chain_lines
from ada_mk.search.plan import Task
from ada_mk.search.profile import Measured


def _step(layers: int, hop: float, work: dict[str, float], staging: float, rng: random.Random) -> Measured:
    """Two tasks a stage; the stage's last task is ready `hop` us after the previous stage's last
    end and ends `work[kind]` us later; the other task ends earlier (it does not set the chain)."""
    m, t = Measured("k"), 0.0
    for layer in range(layers):
        for kind in CHAIN:
            ready = t + hop
            early = rng.uniform(0.1, 0.9)
            m.times[Task(kind, layer, 0)] = (t - 1.0, ready - early, ready - early + 0.1, ready + work[kind] * early)
            m.times[Task(kind, layer, 1)] = (t - 1.0, ready, ready + staging, ready + work[kind])
            t = ready + work[kind]
    m.times[Task("lm_head", 0, 0)] = (t - 1.0, t + hop, t + hop + staging, t + hop + 50.0)
    return m


def test_hops_and_stages_of_a_known_step():
    rng = random.Random()
    hop, staging = rng.uniform(0.5, 3.0), rng.uniform(0.2, 1.0)
    work = {k: rng.uniform(5.0, 40.0) for k in CHAIN}
    m = _step(4, hop, work, staging, rng)
    hops = chain_hops(m)
    assert [(h.kind, h.layer) for h in hops][:6] == [(k, 0) for k in CHAIN] + [("qkv", 1)]
    assert hops[-1].kind == "lm_head" and hops[-1].stage_us == pytest.approx(50.0)
    for h in hops[1:]:
        assert h.hop_us == pytest.approx(hop)
        assert h.staging_us == pytest.approx(staging)
        if h.kind in work:
            assert h.stage_us == pytest.approx(work[h.kind])
    lines = chain_lines(m)
    assert "mean of 3 layers from layer 1" in lines[0]
    span = float(lines[-1].split("layer span ")[1].split(" us")[0])
    assert span == pytest.approx(5 * hop + sum(work.values()), abs=0.01)
    gate_up = next(line for line in lines if line.strip().startswith("gate_up")).split()
    assert float(gate_up[1]) == pytest.approx(hop, abs=0.01) and float(gate_up[3]) == pytest.approx(work["gate_up"], abs=0.01)


def test_explain_reports_the_chain(tmp_path):
    from ada_mk.search.explain import explain
    from test_explain_profile import synthetic_times
    from ada_mk.config import load_config
    from ada_mk.search import planner
    from ada_mk.search.profile import measured_from_times
    from test_cli_errors import SMOL

    m, d = load_config(SMOL)
    plan = planner.make_plan(m, d, strategy="round-robin")
    _, times = synthetic_times(plan)
    text = explain(plan, tmp_path / "ex", compare_unsplit=False, png=False, profile=measured_from_times(plan, times))
    assert "measured chain per layer" in text and "layer span" in text
