"""adamk-gen: bad input is one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ada_mk.cli.gen import main

ROOT = Path(__file__).resolve().parents[1]
LLAMA = ROOT / "configs" / "llama3-8b.yaml"
SMOL = ROOT / "configs" / "smollm2-135m.yaml"


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by default


def run(*args: str):
    return runner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def mutated(tmp_path: Path, update) -> Path:
    d = yaml.safe_load(LLAMA.read_text())
    update(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("adamk-gen: error: ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    for n in needles:
        assert n in lines[0]


BAD_FILES = {
    "unknown key": (lambda d: d["model"].update(hiden_size=1), "model.hiden_size: unknown key"),
    "missing key": (lambda d: d["model"].pop("vocab_size"), "model.vocab_size: missing"),
    "wrong type": (lambda d: d["model"].update(hidden_size="4096"), "model.hidden_size = '4096'"),
    "bool as int": (lambda d: d["model"].update(num_hidden_layers=True), "model.num_hidden_layers = True"),
    "negative": (lambda d: d["model"].update(vocab_size=-1), "model.vocab_size = -1"),
    "eps": (lambda d: d["model"].update(rms_norm_eps=0.0), "model.rms_norm_eps = 0.0"),
    "theta": (lambda d: d["model"].update(rope_theta=-5.0), "model.rope_theta = -5.0"),
    "kv heads": (lambda d: d["model"].update(num_key_value_heads=5), "model.num_key_value_heads = 5: must divide"),
    "head_dim": (lambda d: d["model"].update(head_dim=100), "model.head_dim = 100"),
    "hidden": (lambda d: d["model"].update(hidden_size=4100), "model.hidden_size = 4100"),
    "rope type": (lambda d: d["model"].update(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "unsupported rope type"),
    "model type": (lambda d: d["model"].update(model_type="gpt2"), "model.model_type = 'gpt2'"),
    "gpu": (lambda d: d["deploy"].update(gpu="V100"), "deploy.gpu = 'V100'"),
    "batch": (lambda d: d["deploy"].update(batch=9), "deploy.batch = 9"),
    "max_context": (lambda d: d["deploy"].update(max_context=10**5), "deploy.max_context = 100000"),
    "dtype": (lambda d: d["deploy"].update(dtype="fp8"), "deploy.dtype = 'fp8'"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_config_file(tmp_path, kind):
    update, needle = BAD_FILES[kind]
    p = mutated(tmp_path, update)
    assert_one_line_error(run("--config", p, "--out", tmp_path / "out"), str(p), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [
    (["--gpu", "V100"], "--gpu = 'V100': unknown GPU"),
    (["--batch", "9"], "--batch = 9: must be in 1..8"),
    (["--batch", "0"], "--batch = 0"),
    (["--max-context", "9000"], "--max-context = 9000"),
    (["--dtype", "fp16"], "--dtype = 'fp16'"),
])
def test_bad_flags(tmp_path, args, needle):
    assert_one_line_error(run("--config", LLAMA, "--out", tmp_path, *args), needle)


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read config"),
    ("model:\n  name: x\n hidden: 1\n", "bad.yaml:3:"),
    ("- 1\n", "the top level must be a mapping"),
    (b"\xff\x00", "not UTF-8"),
])
def test_unreadable_config(tmp_path, content, needle):
    p = tmp_path / "bad.yaml"
    if content is not None:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_error(run("--config", p), needle)


def test_bad_hf_config(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 64,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10,
                             "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
    assert_one_line_error(run("--config", p), "rope_scaling.rope_type = 'yarn'")


def test_subprocess_no_traceback(tmp_path):
    """The real entry point (`python -m ada_mk.cli.gen`), not just click's test runner."""
    p = mutated(tmp_path, lambda d: d["model"].update(num_key_value_heads=5))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "ada_mk.cli.gen", "--config", str(p)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr == f"adamk-gen: error: {p}: model.num_key_value_heads = 5: must divide num_attention_heads (32)\n"


def test_help():
    r = run("--help")
    assert r.exit_code == 0
    for opt in ("--config", "--gpu", "--batch", "--max-context", "--dtype", "--out", "--dump-ir"):
        assert opt in r.stdout


# --------------------------------------------------------------------------- success path (needs ada_mk.ir)


@pytest.fixture
def have_ir():
    ir = pytest.importorskip("ada_mk.ir")
    if not hasattr(ir, "build_decode_graph"):
        pytest.skip("ada_mk.ir has no build_decode_graph yet")


@pytest.fixture
def fake_codegen(monkeypatch):
    """Stands in for ada_mk.codegen.pipeline (another engineer's) to see what the CLI hands it."""
    calls = []
    mod = types.ModuleType("ada_mk.codegen.pipeline")
    mod.plan_for = lambda model, deploy: ("fake plan", model.name)
    mod.emit = lambda model, deploy, graph, out_dir, log, plan: (calls.append((model, deploy, graph, out_dir)),
                                                                 log(f"fake emit of {plan}"))
    monkeypatch.setitem(sys.modules, "ada_mk.codegen.pipeline", mod)
    return calls


def test_generates_ir(tmp_path, have_ir, fake_codegen):
    r = run("--config", SMOL, "--gpu", "sm_89", "--batch", "2", "--out", tmp_path)
    assert r.exit_code == 0, (r.stderr, r.exception)
    target = tmp_path / "smollm2-135m" / "L20-bs2"
    ir = json.loads((target / "ir.json").read_text())
    assert ir["batch"] == 2
    assert sorted(os.listdir(target)) == ["ir.json"]  # no temporary files left
    (model, deploy, graph, out_dir), = fake_codegen
    assert (model.name, deploy.gpu.name, deploy.batch, out_dir) == ("smollm2-135m", "L20", 2, target)
    last = r.stderr.splitlines()[-1]
    assert "smollm2-135m" in last and "L20" in last and "GB/step" in last and str(target) in last
    assert "fake emit" in r.stderr and "Traceback" not in r.stderr


def test_dump_ir(tmp_path, have_ir, fake_codegen):
    r = run("--config", SMOL, "--dump-ir", "--out", tmp_path / "out")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "embed" in r.stdout
    assert not (tmp_path / "out").exists() and fake_codegen == []


def test_unwritable_output(tmp_path, have_ir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("--config", SMOL, "--out", blocker)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]  # after the progress lines
    assert last.startswith("adamk-gen: error: ") and "cannot write output: Not a directory" in last
