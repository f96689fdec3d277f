"""CI compile check: every shipped config's kernel compiles with nvcc for Ada (sm_89) and Hopper
(sm_90a), in one nvcc call per kernel, fatbin only, in every weights format (bf16 for the config's
own GPU; fp8 and int8 for it and for the L20, whose plans fit 99 KB of shared memory; int4 for the
H100 at batch 1 and the L20 at batch 4, one architecture each); and one full
`adamk-gen` build (fatbin plus the C-ABI library, copied into the output directory) for the
smallest model.

Compile only: no GPU needed. Skipped when nvcc is not on PATH. Each test builds into its own
empty cache ($ADAMK_CACHE), so nvcc really runs (about 5 s per kernel for both architectures
on 2 cores).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ada_mk.codegen.build import build
from ada_mk.codegen.render import render
from ada_mk.config import load_config
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ARCHS = ["sm_89", "sm_90a"]

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _compile(config: Path, gpu: str | None, cache: Path, weights: str = "bf16") -> None:
    model, deploy = load_config(config, gpu=gpu, batch=1, weights=weights)
    plan = make_plan(model, deploy)
    art = build(render(plan), ARCHS, library=False)
    assert art.fatbin.is_file() and art.fatbin.stat().st_size > 0
    assert art.directory.parent == cache / "build"  # really compiled here, not taken from a shared cache


# HF config.json files as published (configs/*.json): one compile each of the H100 plan for
# Hopper and of the L20 plan for Ada, at batch 1.
HF_CONFIGS = sorted((ROOT / "configs").glob("*.json"))


@pytest.mark.parametrize("gpu,arch", [("H100", "sm_90a"), ("L20", "sm_89")])
@pytest.mark.parametrize("config", HF_CONFIGS, ids=[p.stem for p in HF_CONFIGS])
def test_hf_configs_compile(config, gpu, arch, fresh_cache):
    model, deploy = load_config(config, gpu=gpu, batch=1)
    art = build(render(make_plan(model, deploy)), [arch], library=False)
    assert art.fatbin.is_file() and art.fatbin.stat().st_size > 0
    assert art.directory.parent == fresh_cache / "build"


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"llama3-8b", "llama3.2-1b", "smollm2-135m"}


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_compiles_for_ada_and_hopper(config, fresh_cache):
    """The plan for the config's own deploy GPU."""
    _compile(config, None, fresh_cache)


@pytest.mark.parametrize("weights", ["fp8", "int8"])
@pytest.mark.parametrize("gpu", [None, "L20"], ids=["own-gpu", "L20"])
@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_8bit_kernels_compile(config, gpu, weights, fresh_cache):
    """8-bit weights: the plan for the config's own GPU and the Ada plan."""
    _compile(config, gpu, fresh_cache, weights)


INT4_CASES = [(c, gpu, batch) for c in CONFIGS for gpu, batch in (("H100", 1), ("L20", 4))]
INT4_CASES.append((ROOT / "configs" / "llama3.2-1b.yaml", "H100", 4))  # Hopper's batched multiply (bulk copies)


@pytest.mark.parametrize("config,gpu,batch", INT4_CASES, ids=[f"{c.stem}-{g}-bs{b}" for c, g, b in INT4_CASES])
def test_int4_kernels_compile(config, gpu, batch, fresh_cache):
    """4-bit weights: each config's H100 plan (one sequence) for sm_90a and its L20 plan (the
    batched multiply, cp.async ring) for sm_89, one architecture each to keep the cost modest;
    SmolLM2-135M (K = 576) at group 32, the others at the default 128."""
    group = 32 if config.stem == "smollm2-135m" else None
    model, deploy = load_config(config, gpu=gpu, batch=batch, weights="int4", weights_group=group)
    plan = make_plan(model, deploy)
    src = render(plan)
    assert "adamk::INT4" in src.files[f"{plan.file_stem}.cu"]
    art = build(src, ["sm_90a" if gpu == "H100" else "sm_89"], library=False)
    assert art.fatbin.is_file() and art.fatbin.stat().st_size > 0
    assert art.directory.parent == fresh_cache / "build"


def test_ada_plan_compiles(fresh_cache):
    """The L20 plan (99 KB of shared memory per block) of the default model, as checked in."""
    _compile(ROOT / "configs" / "llama3-8b.yaml", "L20", fresh_cache)


def test_adamk_gen_builds_fatbin_and_library(tmp_path, fresh_cache):
    from click.testing import CliRunner

    from ada_mk.cli.gen import main

    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--config", str(ROOT / "configs" / "smollm2-135m.yaml"), "--out", str(out),
                                  "--arch", "sm_89"])
    assert r.exit_code == 0, (r.output, r.exception)
    d = out / "smollm2-135m" / "H100-bs1"
    stem = next(p.stem for p in d.glob("*.h"))
    for name in (f"{stem}.fatbin", f"lib{stem}.so", f"{stem}.h", f"{stem}.cu", "plan.json", "ir.json"):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    # The copied library loads (no GPU needed for that) and describes the plan written beside it.
    import json

    from ada_mk.runtime.capi import SharedLibrary

    lib = SharedLibrary(d / f"lib{stem}.so")
    assert lib.plan_json() == json.loads((d / "plan.json").read_text())
    assert stem in lib.version


def test_diagnostic_builds_compile(fresh_cache):
    """The profile build and the ablation builds of benchmarks/ablation.py (ADAMK_ABLATE_*) compile,
    each into its own cache entry named by its macros."""
    model, deploy = load_config(ROOT / "configs" / "smollm2-135m.yaml", batch=1)
    source = render(make_plan(model, deploy))
    plain = build(source, ["sm_90a"], library=False)
    ablated = build(source, ["sm_90a"], library=False, profile=True,
                    defines=("ADAMK_ABLATE_WAITS", "ADAMK_ABLATE_STAGING", "ADAMK_ABLATE_MATH"))
    assert ablated.directory != plain.directory
    assert ablated.fatbin.name == f"{source.name}_profile_ablate_waits_ablate_staging_ablate_math.fatbin"
    assert ablated.fatbin.stat().st_size > 0
