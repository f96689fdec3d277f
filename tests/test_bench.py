"""adamk-bench on the CPU: byte accounting, the RESULTS.md / JSON / plot output, the pure helpers of
the harness, and -- what makes the PyTorch baseline a fair one -- the gpt-fast-style decoder
computing the same function as HF transformers (float32, eager, several decode steps over a
static cache, flex_attention and SDPA), including over an HF StaticCache filled the way the GPU
harness fills it. No timings are asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ada_mk.bench.spec import mk_max_context, plan_gpus, round_up, window_start
from ada_mk.bench.report import Row, append_results, markdown_section, markdown_table, step_bytes, write_json
from ada_mk.config import ModelConfig, RopeScaling, load_config

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- byte accounting


def _expected_bytes(m: ModelConfig, batch: int, context: int) -> tuple[int, int]:
    H, I, V, d = m.hidden_size, m.intermediate_size, m.vocab_size, m.head_dim
    per_layer = (m.q_size + 2 * m.kv_size) * H + H * m.q_size + 3 * I * H + 2 * H
    if m.attention_bias:
        per_layer += m.q_size + 2 * m.kv_size
    elems = m.num_hidden_layers * per_layer + H + V * H  # layers, final norm, LM head
    if not m.tie_word_embeddings:
        elems += batch * H  # the embedding rows looked up (tied: the LM head reads the whole matrix)
    kv = 2 * m.num_hidden_layers * batch * m.num_key_value_heads * context * d * 2
    return 2 * elems, kv


@pytest.mark.parametrize("config,batch,context", [("llama3-8b", 1, 512), ("llama3-8b", 8, 4096),
                                                  ("llama3.2-1b", 1, 512), ("qwen2.5-0.5b", 4, 1024)])
def test_step_bytes(config, batch, context):
    m, _ = load_config(ROOT / "configs" / f"{config}.yaml")
    b = step_bytes(m, batch, context)
    w, kv = _expected_bytes(m, batch, context)
    assert (b.weights, b.kv, b.total) == (w, kv, w + kv)


def test_step_bytes_matches_the_brief():
    """../shared/BRIEF.md: 15.01 GB read per token for Llama-3-8B, 2.47 GB for Llama-3.2-1B (weights)."""
    for config, gb in (("llama3-8b", 15.01), ("llama3.2-1b", 2.47)):
        m, _ = load_config(ROOT / "configs" / f"{config}.yaml")
        assert round(step_bytes(m, 1, 512).weights / 1e9, 2) == gb


# ------------------------------------------------------------------------------- report output


def _rows() -> list[Row]:
    kw = dict(config="llama3-8b", batch=1, bytes_per_step=15_000_000_000, read_gbs=3000.0, layers=32)
    return [
        Row(context=512, system="eager", ms=30.0, **kw),
        Row(context=512, system="compile-flex", ms=6.0, check_rel_err=0.004, cache_len=4224, compile_s=80, **kw),
        Row(context=512, system="megakernel", ms=5.5, note="plan H100, max_context 1024", **kw),
        Row(context=512, system="compile-sdpa", error="AssertionError: logits | differ", **kw),
        Row(context=4096, system="compile-flex", ms=6.5, **kw),
    ]


def test_row_metrics():
    r = _rows()[2]
    assert r.tokens_per_s == pytest.approx(1000 / 5.5)
    assert r.gbs == pytest.approx(15e9 / 5.5e-3 / 1e9)
    assert r.frac == pytest.approx(r.gbs / 3000)
    assert r.floor_ms == pytest.approx(5.0)
    assert Row("x", 8, 512, "eager", ms=10.0).tokens_per_s == pytest.approx(800)  # B tokens per step


def test_markdown_table():
    t = markdown_table(_rows()).splitlines()
    assert t[0].startswith("| config | batch | context | system | ms/step | tokens/s | GB/s | % of read bw "
                        "| fixed us/layer | speedup vs compile-flex |")
    body = [line for line in t[2:]]
    # Sorted by context, then megakernel, compile-flex, compile-sdpa, eager; then the floors.
    assert [line.split(" | ")[3] for line in body] == [
        "MegaKernel (ada_mk)", "torch.compile + flex_attention", "torch.compile + SDPA",
        "HF transformers eager (sdpa)", "floor: bytes / read bandwidth",
        "torch.compile + flex_attention", "floor: bytes / read bandwidth"]
    mk = body[0].split(" | ")
    assert mk[4:10] == ["5.500", "182", "2,727", "90.9", "15.6", "1.09x"]  # (5.5 - 5.0) ms / 32 layers
    assert "NOT TIMED: AssertionError: logits / differ" in body[2]  # a pipe would break the table
    assert body[2].split(" | ")[4] == "-"
    assert "logits rel err 4.0e-03" in body[1] and "cache 4224" in body[1] and "compile 80 s" in body[1]
    assert body[4].split(" | ")[4] == "5.000" and body[4].split(" | ")[7] == "100.0"
    assert all(line.count("|") == t[0].count("|") for line in t)


def _meta() -> dict:
    return {"date": "2026-12-01 10:00 UTC", "card": "NVIDIA H100 80GB HBM3", "card_memory_gib": 79.1,
            "commit": "abc1234", "torch": "2.11.0", "transformers": "5.17.0", "cuda": "12.8", "seed": 7,
            "windows": 5, "steps": 128,
            "bandwidth": {"read_gbs": 3000.0, "read_method": "x.sum()", "copy_gbs": 2900.0}}


def test_append_results(tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"
    s1 = markdown_section(_meta(), _rows())
    append_results(path, s1)
    append_results(path, markdown_section({**_meta(), "commit": "def5678"}, _rows()[:1]))
    text = path.read_text()
    assert text.startswith("# adamk-bench results\n")
    assert text.count("# adamk-bench results") == 1
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## 2026-12-01 10:00 UTC · NVIDIA H100 80GB HBM3 · commit abc1234",
                     "## 2026-12-01 10:00 UTC · NVIDIA H100 80GB HBM3 · commit def5678"]
    assert "**3,000 GB/s**" in s1 and "79.1 GiB" in s1 and "seed 7" in s1
    assert "\n\n## 2026-12-01 10:00 UTC · NVIDIA H100 80GB HBM3 · commit def5678" in text
    assert s1 in text


def test_json_and_plot(tmp_path):
    rows = _rows()
    write_json(tmp_path / "r.json", _meta(), rows)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["meta"]["commit"] == "abc1234"
    assert [r["system"] for r in data["results"]] == [r.system for r in rows]
    assert data["results"][2]["frac_read_bw"] == pytest.approx(rows[2].frac)
    pytest.importorskip("matplotlib")
    from ada_mk.bench.report import plot

    pngs = plot(rows, tmp_path / "plots", "NVIDIA H100 80GB HBM3")
    assert [p.name for p in pngs] == ["llama3-8b_bs1_H10080GBHBM3.png"]
    assert pngs[0].read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------- harness helpers


def test_windows_and_cache_sizes():
    assert window_start(512, 128) == 448 and window_start(32, 128) == 0
    assert round_up(576, 128) == 640
    assert mk_max_context(512, 128, 8192) == 1024  # the GPU tests' prebuilt kernels
    assert mk_max_context(1024, 128, 8192) == 2048
    assert mk_max_context(4096, 128, 8192) == 8192
    assert mk_max_context(8000, 128, 8192) == 8192 and mk_max_context(1000, 16, 1010) == 1010
    with pytest.raises(ValueError):
        mk_max_context(8192, 128, 8192)


def test_plan_gpus():
    assert plan_gpus("auto", "NVIDIA H100 80GB HBM3") == ["H100"]
    assert plan_gpus("auto", "NVIDIA H200") == ["H200", "H100"]
    assert plan_gpus("auto", "Some Future GPU") == ["H100"]
    assert plan_gpus("h100", "NVIDIA H200") == ["H100"]
    with pytest.raises(ValueError):
        plan_gpus("nope", None)


def test_cli_needs_no_torch_and_parses():
    code = ("import sys; from ada_mk.cli import bench as c; "
            "ctx = c.main.make_context('adamk-bench', ['--config', 'llama3-8b,llama3.2-1b', '--context', '512', "
            "'1024,2048', '--context', '4096', '--systems', 'megakernel,eager']); "
            "s = c.spec_from_options(ctx.params); "
            "assert s.contexts == [512, 1024, 2048, 4096], s.contexts; "
            "assert [p.stem for p in s.configs] == ['llama3-8b', 'llama3.2-1b']; "
            "assert s.systems == ('megakernel', 'eager'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for args, needle in ((["--systems", "nope"], "--systems"), (["--context", "x"], "--context"),
                         (["--batch", "0"], "--batch"), (["--context", "--steps", "2"], "--context needs")):
        r = subprocess.run([sys.executable, "-m", "ada_mk.cli.bench", "--config", "llama3-8b", *args],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("adamk-bench: error: ") and needle in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "ada_mk.cli.bench", "--config", "no-such-config"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no-such-config" in r.stderr and len(r.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------- the baseline model


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=256, rms_norm_eps=1e-5, max_position_embeddings=1024)
TINY_MODELS = {
    "llama3-rope": ModelConfig(name="tiny-llama3", model_type="llama", rope_theta=500000.0, **TINY,
                               rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64)),
    "qwen2-bias": ModelConfig(name="tiny-qwen2", model_type="qwen2", rope_theta=1e6, attention_bias=True, **TINY),
    "tied": ModelConfig(name="tiny-tied", model_type="llama", rope_theta=1e4, tie_word_embeddings=True, **TINY),
    "qwen3-qknorm": ModelConfig(name="tiny-qwen3", model_type="qwen3", rope_theta=1e6, qk_norm=True, **TINY),
}
STEPS = 6


@pytest.fixture(scope="module")
def torch():
    t = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return t


def _hf(torch, m: ModelConfig):
    from ada_mk.bench import baselines as bl

    return bl.random_hf_model(m, device="cpu", dtype=torch.float32, seed=3, attn_implementation="eager")


@pytest.mark.parametrize("attention", ["flex", "sdpa"])
@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_decoder_matches_hf_over_decode_steps(torch, kind, attention):
    """Tokens fed one step at a time from position 0: logits at every step equal HF's full forward."""
    from ada_mk.bench import baselines as bl

    m = TINY_MODELS[kind]
    hf = _hf(torch, m)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, m.vocab_size, (2, STEPS), generator=gen)
    with torch.no_grad():
        ref = hf(input_ids=tokens, use_cache=False).logits
        dec = bl.GptFastDecoder(m, bl.hf_weights(hf), batch=2, max_seq=128, attention=attention)
        for t in range(STEPS):
            nxt, logits = bl.decode_one_token(dec, tokens[:, t:t + 1], torch.tensor([t]))
            assert bl.rel_err(logits, ref[:, t]) < 1e-4, (kind, attention, t)
            assert torch.equal(nxt, logits.argmax(-1))
    if m.tie_word_embeddings:
        assert dec.head is dec.embed
    if m.attention_bias:
        assert dec.layers[0].bqkv is not None


@pytest.mark.parametrize("kind", ["llama3-rope", "qwen2-bias"])
def test_decoder_matches_hf_static_cache_filled_as_the_harness_does(torch, kind):
    """The GPU harness writes the same random K/V into HF's StaticCache and the decoder's caches,
    moves HF's cache to a position, and compares one step: here over several steps, in float32."""
    from ada_mk.bench import baselines as bl

    m = TINY_MODELS[kind]
    hf = _hf(torch, m)
    start, batch = 40, 2
    tokens = torch.randint(0, m.vocab_size, (batch, STEPS), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cache = bl.hf_static_cache(hf, batch, 64)
        bl.fill_random_kv(bl.cache_kv(cache), start, seed=11)
        bl.set_cache_position(cache, start)
        for attention in ("flex", "sdpa"):
            dec = bl.GptFastDecoder(m, bl.hf_weights(hf), batch=batch, max_seq=128, attention=attention)
            bl.fill_random_kv([(b.k_cache, b.v_cache) for b in dec.layers], start, seed=11)
            bl.set_cache_position(cache, start)
            for t in range(STEPS):
                ref = bl.hf_step(hf, cache, tokens[:, t:t + 1])
                _, logits = bl.decode_one_token(dec, tokens[:, t:t + 1], torch.tensor([start + t]))
                assert bl.rel_err(logits, ref) < 1e-4, (kind, attention, t)
                first = ref if t == 0 else first
        # The random prefix is attended to: without it the first step's logits differ.
        empty = bl.hf_static_cache(hf, batch, 64)
        bl.set_cache_position(empty, start)
        assert bl.rel_err(bl.hf_step(hf, empty, tokens[:, :1]), first) > 1e-3
        k0 = bl.cache_kv(cache)[0][0]
        assert k0.shape == (batch, m.num_key_value_heads, 64, m.head_dim) and k0[:, :, :start].abs().sum() > 0


# ------------------------------------------------------------------------------- the whole run


TINY_YAML = """model:
  name: tiny-bench
  model_type: qwen2
  hidden_size: 64
  intermediate_size: 128
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  head_dim: 16
  vocab_size: 256
  rms_norm_eps: 1.0e-6
  rope_theta: 1000000.0
  max_position_embeddings: 1024
  tie_word_embeddings: true
  attention_bias: true
"""


def test_whole_run_on_the_cpu(torch, tmp_path, capsys):
    """adamk-bench end to end with --device cpu (no MegaKernel; aot_eager instead of inductor):
    every baseline passes its logits check against HF eager and is timed; the outputs appear."""
    from ada_mk.cli.bench import main

    cfg = tmp_path / "tiny-bench.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "out"
    rc = main(["--config", str(cfg), "--batch", "2", "--context", "16,40", "--steps", "2", "--windows", "1",
               "--warmup", "0", "--device", "cpu", "--compile-backend", "aot_eager", "--bw-gb", "0.01",
               "--results", str(tmp_path / "RESULTS.md"), "--plot-dir", str(tmp_path / "plots"),
               "--out-json", str(tmp_path / "r.json"), "--out-dir", str(out), "--seed", "3"], standalone_mode=False)
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    rows = {(r["system"], r["context"]): r for r in data["results"]}
    assert set(rows) == {(s, c) for s in ("eager", "compile-flex", "compile-sdpa", "megakernel") for c in (16, 40)}
    for (system, c), r in rows.items():
        if system == "megakernel":
            assert "CUDA" in r["error"] and r["ms"] is None
            continue
        assert not r["error"], r["error"]
        assert r["ms"] > 0 and len(r["ms_windows"]) == 1 and r["bytes_per_step"] > 0
        if system != "eager":
            assert r["check_rel_err"] < 3e-2 and r["cache_len"] == 128
    assert data["meta"]["seed"] == 3 and data["meta"]["bandwidth"]["read_gbs"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## " in text and "| tiny-bench | 2 | 40 | torch.compile + flex_attention |" in text
    assert (out / "section.md").read_text() in text
    assert (out / "r.json").exists()
    if any((tmp_path / "plots").glob("*.png")):
        assert (out / "plots" / "tiny-bench_bs2_CPU.png").exists() or list((out / "plots").glob("*.png"))
