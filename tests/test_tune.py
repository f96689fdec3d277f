"""adamk-tune without a GPU: the candidates it builds, the winner it keeps and what it writes,
with a fake nvcc (no compile) and a fake timer in place of the GPU."""
from __future__ import annotations

import functools
import json
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ada_mk import tuning
from ada_mk.cli.tune import main as tune_main
from ada_mk.codegen import build as build_mod
from ada_mk.search.cost import simulate
from ada_mk.codegen import pipeline
from ada_mk.config import load_config
from ada_mk.search.search import search_plan
from ada_mk.search.validate import validate_plan

ROOT = Path(__file__).resolve().parents[1]
SMOL = ROOT / "configs" / "smollm2-135m.yaml"
N = 4


@functools.lru_cache(maxsize=None)
def smol_candidates() -> tuple:
    return tuple(tuning.candidates_for(*load_config(SMOL), N))


class FakeTimer:
    """Times the kernels as given ms per step, by plan hash; records what it was asked."""

    def __init__(self, ms_of):
        self.ms_of = ms_of  # (index, plan) -> ms per step
        self.calls = []

    def card(self) -> str:
        return "Fake GPU 80GB"

    def __call__(self, kernels, *, context, steps, rounds):
        self.calls.append((list(kernels), context, steps, rounds))
        return [[self.ms_of(i, plan) + 0.001 * r for r in range(rounds)] for i, (plan, _) in enumerate(kernels)]


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """An "nvcc" that writes its -o file (and a line to calls.log): the build cache fills as for
    real, in seconds."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls.log\n'
                    'while [ $# -gt 0 ]; do [ "$1" = -o ] && echo fake > "$2"; shift; done\n')
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(pipeline, "nvcc_path", lambda: str(nvcc))
    # The cache key covers the device headers; fix it so that an edit to them while the tests
    # run cannot turn a cache hit into a rebuild.
    monkeypatch.setattr(build_mod, "_headers_digest", lambda: "headers")
    monkeypatch.setenv("ADAMK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CUTLASS_INCLUDE", str(tmp_path))  # never read by the fake nvcc
    return tmp_path / "cache"


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def run(*args):
    return runner().invoke(tune_main, [str(a) for a in args], catch_exceptions=True)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("adamk-tune: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0]


def test_candidates_are_distinct_valid_and_ranked():
    cands = smol_candidates()
    m, d = load_config(SMOL)
    assert len(cands) == N
    assert cands[0].plan.plan_hash == search_plan(m, d).plan_hash  # the plan adamk-gen compiles
    assert len({c.plan.plan_hash for c in cands}) == N
    for c in cands:
        validate_plan(c.plan)
    # The rest by predicted time (the first is the search's choice, which may trade up to
    # TIME_TOL of predicted time for less shared memory).
    rest = [c.predicted_s for c in cands[1:]]
    assert rest == sorted(rest)
    assert [c.label for c in cands] == [f"search {i}" for i in range(1, N + 1)]
    # Predicted at the context the candidates are timed at (512), not the plan's nominal context
    # (the middle of its 4,096-position cache, at which the search ranked it).
    for c in cands:
        assert c.predicted_s == pytest.approx(simulate(c.plan, context=512).predicted_s, rel=1e-4)


def test_measured_fastest_is_written(tmp_path, fake_build, monkeypatch):
    second = smol_candidates()[1].plan.plan_hash
    timer = FakeTimer(lambda i, plan: 0.5 if plan.plan_hash == second else 1.0)
    monkeypatch.setattr(tuning, "GpuTimer", lambda: timer)
    out = tmp_path / "out"
    r = run("--config", SMOL, "--out-dir", out, "--steps", 16, "--rounds", 3)
    assert r.exit_code == 0, r.stderr
    kernels, context, steps, rounds = timer.calls[0]
    assert (context, steps, rounds) == (512, 16, 3)
    assert [p.plan_hash for p, _ in kernels] == [c.plan.plan_hash for c in smol_candidates()]
    assert all(Path(f).name.endswith(".fatbin") for _, f in kernels)  # built (into the cache)
    # nvcc ran twice per candidate (fatbin, library); the winner's files came from the cache.
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2 * N

    target = out / "smollm2-135m" / "H100-bs1"
    plan = json.loads((target / "plan.json").read_text())
    winner = smol_candidates()[1].plan
    assert plan["plan"] == json.loads(json.dumps(winner.to_json()))
    names = {p.name for p in target.iterdir()}
    for suffix in (".cu", ".schedule.inc", "_host.cu", ".h", ".fatbin"):
        assert f"{winner.file_stem}{suffix}" in names
    assert f"lib{winner.file_stem}.so" in names and "ir.json" in names
    assert f"{winner.plan_hash}" in (target / f"{winner.file_stem}.h").read_text()

    rec = json.loads((target / "tune.json").read_text())
    assert rec["winner"] == second and rec["card"] == "Fake GPU 80GB"
    assert rec["gpu"] == "H100" and rec["batch"] == 1 and rec["model"] == "smollm2-135m"
    assert rec["date"] and "commit" in rec and rec["archs"] == ["sm_90a"]
    assert rec["timing"]["context"] == 512 and rec["timing"]["rounds"] == 3
    assert [c["plan_hash"] for c in rec["candidates"]] == [c.plan.plan_hash for c in smol_candidates()]
    for c, cand in zip(rec["candidates"], smol_candidates()):
        base = 0.5 if c["plan_hash"] == second else 1.0
        assert c["measured_ms"] == pytest.approx(base + 0.001)  # the median of 3 windows
        assert len(c["windows_ms"]) == 3
        assert c["predicted_ms"] == pytest.approx(cand.predicted_s * 1e3, rel=1e-5)
    # The table on stdout: every candidate, predicted and measured, the winner marked.
    rows = [ln for ln in r.stdout.splitlines() if "search " in ln]
    assert len(rows) == N and rows[1].startswith("*") and second in rows[1]


def test_default_kept_within_noise(tmp_path, fake_build, monkeypatch):
    """Another plan 0.5% faster is within the noise (--min-gain 1%): the search's plan stays."""
    first = smol_candidates()[0].plan.plan_hash
    monkeypatch.setattr(tuning, "GpuTimer", lambda: FakeTimer(lambda i, plan: 1.0 if i == 0 else 0.995))
    r = run("--config", SMOL, "--out-dir", tmp_path, "--rounds", 1, "--candidates", 2)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "smollm2-135m" / "H100-bs1" / "tune.json").read_text())["winner"] == first


def test_build_only_fills_the_cache_and_writes_nothing(tmp_path, fake_build):
    r = run("--config", SMOL, "--out-dir", tmp_path / "out", "--build-only", "--candidates", 2, "--baseline")
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "out").exists()
    # each cache entry's header names the plan it was built from (ADAMK_PLAN_HASH)
    built = [next(p.parent.glob("*.h")).read_text() for p in fake_build.glob("build/*/*.fatbin")]
    # the 2 candidates of a 2-candidate run (not the first 2 of N: the search takes the n best
    # screened plans, then orders them by their full schedules, so the lists need not share a prefix)
    hashes = [c.plan.plan_hash for c in tuning.candidates_for(*load_config(SMOL), 2)]
    assert len(built) == 3 and all(any(f'ADAMK_PLAN_HASH "{h}"' in b for b in built) for h in hashes)
    assert "round-robin" in r.stdout


def test_no_gpu_is_one_line(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = run("--config", SMOL, "--out-dir", tmp_path / "out")
    assert_one_line_error(r, "no CUDA device", "--build-only", "GPU machine")
    assert not (tmp_path / "out").exists()


def test_bad_config_is_one_line(tmp_path):
    d = yaml.safe_load(SMOL.read_text())
    d["model"]["hiden_size"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    assert_one_line_error(run("--config", bad, "--build-only"), str(bad), "model.hiden_size: unknown key")
    assert_one_line_error(run("--config", tmp_path / "none.yaml", "--build-only"), "none.yaml")


@pytest.mark.parametrize("args, needle", [
    (("--context", 4090), "--context 4090"),
    (("--candidates", 0), "--candidates"),
    (("--arch", "sm_70"), "'sm_70'"),
    (("--batch", 9), "batch"),
])
def test_bad_flags_are_one_line(tmp_path, args, needle):
    assert_one_line_error(run("--config", SMOL, "--out-dir", tmp_path, "--build-only", *args), needle)


@pytest.mark.parametrize("build_only", [True, False])
def test_missing_nvcc(tmp_path, monkeypatch, build_only):
    """After the progress lines, one error line; on the GPU machine it says where to build."""
    monkeypatch.setenv("ADAMK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "nvcc_path", lambda: str(tmp_path / "no" / "nvcc"))
    monkeypatch.setattr(tuning, "GpuTimer", lambda: FakeTimer(lambda i, plan: 1.0))
    r = run("--config", SMOL, "--out-dir", tmp_path / "out", "--candidates", 1, *(["--build-only"] if build_only else []))
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("adamk-tune: error: ") and "nvcc not found" in last and "--build-only" in last
    assert ("where nvcc and CUTLASS are" in last) != build_only
