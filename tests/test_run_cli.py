"""adamk-run without a GPU: sampling, the generation loop, one-line errors, and a full run on the
NumPy reference with a tiny GGUF the test writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ada_mk.cli.run import main
from ada_mk.config import deploy_for
from ada_mk.runtime.textgen import Stats, generate, sample
from tests.gguf_util import write_gguf
from tests.test_checkpoints_gguf import TINY, random_weights


def test_sample_greedy_and_filters() -> None:
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 2.9, -5.0])
    assert sample(logits, 0.0, 0, 1.0, rng) == 1
    draws = {sample(logits, 1.0, 2, 1.0, rng) for _ in range(200)}
    assert draws == {1, 3}  # top-k 2 keeps the two best
    draws = {sample(logits, 1.0, 0, 0.3, rng) for _ in range(200)}
    assert draws == {1}  # the best alone already holds > 30% of the mass
    draws = [sample(logits, 100.0, 0, 1.0, rng) for _ in range(500)]
    assert set(draws) == set(range(5))  # a high temperature flattens everything
    a = [sample(logits, 1.0, 0, 1.0, np.random.default_rng(7)) for _ in range(1)]
    b = [sample(logits, 1.0, 0, 1.0, np.random.default_rng(7)) for _ in range(1)]
    assert a == b


def test_generate_stops_and_times() -> None:
    calls = []

    def prefill(ids):
        return 5, None

    def step(tok, pos):
        calls.append((tok, pos))
        return (tok + 1, None)

    got: list[int] = []
    st = Stats()
    out = generate(step, prefill, [1, 2, 3], 10, temperature=0, top_k=0, top_p=1, seed=0, stop_ids=[8],
                   on_token=got.append, stats=st)
    assert out == got == [5, 6, 7, 8]
    assert calls == [(5, 3), (6, 4), (7, 5)]
    assert st.ttft_s > 0 and len(st.decode_s) == 3


def test_deploy_defaults_and_errors() -> None:
    d = deploy_for(TINY, "L20", None, 64)
    assert d.gpu.name == "L20" and d.batch == 1 and d.max_context == 64
    from ada_mk.config import ConfigError

    with pytest.raises(ConfigError, match="max-context"):
        deploy_for(TINY, "H100", None, 10**6)
    with pytest.raises(ConfigError, match="unknown GPU"):
        deploy_for(TINY, "Z9000", None, None)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("g") / "tiny.gguf", TINY, random_weights(TINY), {})


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cpu_reference_run(tiny_gguf: Path) -> None:
    r = _run("--weights", str(tiny_gguf), "--prompt", " the cat", "-n", "5", "--cpu-reference", "--print-ids",
             "--ignore-eos")
    assert r.exit_code == 0, r.output
    assert "time to first token" in r.stderr and "5 tokens generated" in r.stderr
    ids = [int(x) for x in r.stderr.split("ids: ")[1].split("\n")[0].split()]
    assert len(ids) == 5
    from ada_mk.checkpoints import load_checkpoint
    from ada_mk.ir.reference import ReferenceExecutor

    ck = load_checkpoint(tiny_gguf)
    tok = ck.tokenizer()
    ex = ReferenceExecutor(ck.model, ck.weights, 1, 16)
    want = ex.generate(np.array([tok.encode(" the cat")]), 5)[0].tolist()
    assert ids == want
    r2 = _run("--weights", str(tiny_gguf), "--prompt", " the cat", "-n", "5", "--cpu-reference", "--chat",
              "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "3")
    assert r2.exit_code == 0, r2.output


@pytest.mark.parametrize("args,match", [
    (["--weights", "/nonexistent.gguf", "--prompt", "x"], "no such file"),
    (["--prompt", "x", "-n", "5000", "--cpu-reference"], "exceed the KV cache"),
    (["--prompt", "x", "--gpu", "Z9000", "--cpu-reference"], "unknown GPU"),
    (["--prompt", "x", "--config", "/nonexistent.yaml", "--cpu-reference"], "nonexistent"),
])
def test_errors_are_one_line(tiny_gguf: Path, args: list[str], match: str) -> None:
    if "--weights" not in args:
        args = ["--weights", str(tiny_gguf), *args]
    r = _run(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adamk-run: error: ") and match in lines[0], r.stderr
