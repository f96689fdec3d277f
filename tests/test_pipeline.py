"""adamk-gen past the IR: plan.json, the kernel sources, --explain, and the one-line errors of
the plan and build stages. No real nvcc here (tests/test_compile_all.py compiles)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ada_mk.codegen import pipeline
from ada_mk.search.errors import PlanError

from test_cli_errors import SMOL, assert_one_line_error, run  # tests/ is on sys.path (rootdir import)

TARGET = ("smollm2-135m", "H100-bs1")


@pytest.fixture
def quick_plan(monkeypatch):
    """The round-robin plan instead of the (slower) search: these tests are about the CLI's
    mechanics, not the plan. The ones without this fixture run the default path."""
    from ada_mk.search import planner

    monkeypatch.setattr(pipeline, "make_plan", lambda m, d: planner.make_plan(m, d, strategy="round-robin"))


def kernel_files(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in d.iterdir() if p.suffix in (".cu", ".inc", ".h")}


def test_no_build_writes_plan_and_sources(tmp_path):
    r = run("--config", SMOL, "--out", tmp_path, "--no-build")
    assert r.exit_code == 0, (r.stderr, r.exception)
    d = tmp_path.joinpath(*TARGET)
    names = sorted(os.listdir(d))
    stem = next(n for n in names if n.endswith(".h"))[:-2]
    assert names == sorted(["ir.json", "plan.json", f"{stem}.cu", f"{stem}.schedule.inc", f"{stem}_host.cu", f"{stem}.h"])
    doc = json.loads((d / "plan.json").read_text())
    assert set(doc) == {"plan", "layout"}
    assert doc["plan"]["gpu"] == "H100" and doc["plan"]["batch"] == 1
    assert stem == "adamk_smollm2_135m_h100_bs1"  # stable: the plan hash is inside the files
    assert "nvcc" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("adamk-gen: done: smollm2-135m on H100 bs1")


def test_plan_json_is_the_plan(tmp_path):
    """plan.json holds the same document the library's adamk_plan_json() returns."""
    from ada_mk.codegen.render import plan_json
    from ada_mk.config import load_config
    from ada_mk.search.layout import make_layout
    from ada_mk.search.planner import make_plan

    r = run("--config", SMOL, "--out", tmp_path, "--no-build")
    assert r.exit_code == 0, r.stderr
    m, d = load_config(SMOL)
    plan = make_plan(m, d)
    assert json.loads(tmp_path.joinpath(*TARGET, "plan.json").read_text()) == json.loads(plan_json(plan, make_layout(plan)))


def test_regeneration_replaces_files_named_by_a_plan_hash(tmp_path, quick_plan):
    d = tmp_path.joinpath(*TARGET)
    d.mkdir(parents=True)
    old = "adamk_smollm2_135m_h100_bs1_0123456789"
    for suffix in (".cu", ".schedule.inc", "_host.cu", ".h", ".fatbin"):
        (d / f"{old}{suffix}").write_text("old")
    (d / f"lib{old}.so").write_text("old")
    (d / "notes.txt").write_text("mine")
    r = run("--config", SMOL, "--out", tmp_path, "--no-build")
    assert r.exit_code == 0, r.stderr
    assert not [n for n in os.listdir(d) if old in n]
    assert (d / "notes.txt").read_text() == "mine"


def test_explain_prints_the_plan(tmp_path, monkeypatch, quick_plan):
    """--explain prints what ada_mk.search.explain.explain(plan, out_dir) returns (that function
    is tested with the search; here a stand-in keeps this fast)."""
    import ada_mk.search.explain as ex

    calls = []
    monkeypatch.setattr(ex, "explain", lambda plan, out_dir: (calls.append((plan, out_dir)), "EXPLAINED qkv lm_head\n")[1])
    r = run("--config", SMOL, "--out", tmp_path, "--no-build", "--explain")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert r.stdout == "EXPLAINED qkv lm_head\n"
    (plan, out_dir), = calls
    assert out_dir == tmp_path.joinpath(*TARGET) and plan.model.name == "smollm2-135m"


def test_explain_without_matplotlib(tmp_path, monkeypatch):
    """explain() needs matplotlib only for gantt.png: without it, the text still comes."""
    import ada_mk.search.explain as ex

    def explain(plan, out_dir, png=True):
        if png:
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return "text\n"

    monkeypatch.setattr(ex, "explain", explain)
    logged = []
    assert pipeline.explain_text(object(), tmp_path, logged.append) == "text\n"
    assert logged and "matplotlib" in logged[0]


def test_plan_summary_fallback():
    from ada_mk.config import load_config
    from ada_mk.search.planner import make_plan

    text = pipeline.plan_summary(make_plan(*load_config(SMOL), strategy="round-robin"))
    assert "shared memory" in text and "gate_up" in text


def test_plan_error_is_one_line(tmp_path, monkeypatch):
    def refuse(model, deploy):
        raise PlanError("needs 300000 bytes of shared memory\nwith a 2-deep ring")

    monkeypatch.setattr(pipeline, "make_plan", refuse)
    r = run("--config", SMOL, "--out", tmp_path, "--no-build")
    assert r.exit_code == 2
    last = r.stderr.splitlines()[-1]
    assert last == ("adamk-gen: error: no valid plan for smollm2-135m on H100 batch 1: "
                    "needs 300000 bytes of shared memory with a 2-deep ring")
    assert "Traceback" not in r.stderr


def test_missing_nvcc(tmp_path, monkeypatch, quick_plan):
    monkeypatch.setenv("ADAMK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "nvcc_path", lambda: str(tmp_path / "no" / "nvcc"))
    r = run("--config", SMOL, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("adamk-gen: error: ") and "nvcc not found" in last and "--no-build" in last
    # The sources were written before the build was tried.
    assert any(n.endswith(".cu") for n in os.listdir(tmp_path.joinpath("out", *TARGET)))


def test_nvcc_failure_is_one_line_with_a_log(tmp_path, monkeypatch, quick_plan):
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\necho 'kernel.cu(12): error: identifier \"oops\" is undefined' >&2\n"
                    "echo '1 error detected' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ADAMK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "nvcc_path", lambda: str(fake))
    r = run("--config", SMOL, "--out", tmp_path / "out", "--arch", "sm_89")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("adamk-gen: error: nvcc failed") and 'identifier "oops" is undefined' in last
    log = tmp_path.joinpath("out", *TARGET, pipeline.BUILD_LOG)
    assert str(log) in last and "1 error detected" in log.read_text()
    assert "compute_89" in r.stderr and "compute_90a" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--arch", "sm_70"], "Invalid value for '--arch': 'sm_70': expected one of sm_80, sm_89, sm_90a, sm_90"),
    (["--no-build", "--arch", "sm_89"], "--arch needs a build: drop --no-build"),
    (["--batch", "two"], "Invalid value for '--batch': 'two' is not a valid integer."),
    (["--bogus"], "--bogus"),
])
def test_bad_build_flags(tmp_path, args, needle):
    r = run("--config", SMOL, "--out", tmp_path / "out", *args)
    assert_one_line_error(r, needle)
    assert not (tmp_path / "out").exists()


def test_missing_config_flag():
    assert_one_line_error(run(), "Missing option '--config'")


def test_help_lists_build_options():
    r = run("--help")
    assert r.exit_code == 0
    for opt in ("--no-build", "--arch", "--explain"):
        assert opt in r.stdout


def test_target_archs():
    from ada_mk.config import load_config

    _, l20 = load_config(SMOL, gpu="L20")
    _, h100 = load_config(SMOL, gpu="H100")
    assert pipeline.target_archs(l20) == ["sm_89"]
    assert pipeline.target_archs(h100, ["sm_89", "sm_90a", "sm_89"]) == ["sm_90a", "sm_89"]
    with pytest.raises(pipeline.EmitError):
        pipeline.target_archs(h100, ["sm_75"])
