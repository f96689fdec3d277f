"""The MegaKernel against HF transformers on the GPU, with fresh random weights every run.

For each case: an HF model with random bf16 weights generates 64 greedy tokens after a random
prompt (static cache); the kernel is fed the same tokens one step at a time (teacher forcing) and
its logits at every decode step must match HF's within relative error 2e-2; its greedy choice
must match a float32 forward of the same weights wherever that reference's top-2 margin is clear.
"""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from .kernels import STUCK, kernel_for, model_for

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

DECODE_STEPS = 64
REL_TOL = 2e-2
CLEAR_MARGIN = 0.05  # top-2 gap of the float32 logits (their std is about 0.5 to 1 here)

_models: dict = {}


def _seed() -> int:
    seed = int(os.environ.get("ADA_MK_SEED", np.random.SeedSequence().entropy % 2**31))
    print(f"seed {seed} (ADA_MK_SEED={seed} replays it)")
    return seed


def hf_model(config: str):
    """A random bf16 HF model of `config` on the GPU (one kept at a time: 8B models are big).

    Variance-preserving random weights (ada_mk.bench.baselines.random_hf_model: std 0.5/sqrt(fan_in),
    output projections further / sqrt(2 * layers)). Why not HF's N(0, 0.02): on a 16-layer
    Llama-3.2-1B shape that init makes bf16 itself the dominant error -- HF's own sdpa and eager
    bf16 paths differ by 3.0% in logits there (1.3% with this init; measured on the CPU,
    2026-11-27) -- so no bf16 kernel could be held to 2e-2."""
    from ada_mk.bench.baselines import random_hf_model

    if config in _models:
        return _models[config]
    _models.clear()
    gc.collect()
    torch.cuda.empty_cache()
    m, _ = model_for(config, "H100", 1, None)
    _models[config] = random_hf_model(m, seed=_seed(), attn_implementation="sdpa")
    return _models[config]


def float32_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a float32 forward of the same weights. The model is converted in place and back;
    the RoPE frequency buffers are restored afterwards, since a cast to bf16 would round them."""
    saved = {n: b.clone() for n, b in hf.named_buffers() if b.dtype == torch.float32}
    with torch.no_grad():
        logits = hf.float()(input_ids=ids).logits.float()
    hf.to(torch.bfloat16)
    for n, b in hf.named_buffers():
        if n in saved:
            b.data = saved[n]
    return logits


def hf_generate(hf, prompt: torch.Tensor, n: int):
    """Greedy continuation with a static cache: (sequence [B, T + n], logits [n][B, V] float32)."""
    kw = dict(max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=0, attention_mask=torch.ones_like(prompt))
    try:
        out = hf.generate(prompt, cache_implementation="static", disable_compile=True, **kw)
    except (TypeError, ValueError):  # an older transformers without these options
        out = hf.generate(prompt, **kw)
    return out.sequences, [l.float() for l in out.logits]


def engine_for(config: str, gpu: str, batch: int, hf, layers=None, ksplits=None, defines=()):
    from ada_mk.runtime.engine import MegaKernelEngine

    plan, art = kernel_for(config, gpu, batch, layers, defines, ksplits=ksplits)
    eng = MegaKernelEngine(plan, art.fatbin)
    eng.load_weights({k: v for k, v in hf.state_dict().items()})
    return eng


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _two_layer_hf(batch: int):
    """A 2-layer Llama-3.2-1B in HF with fresh random weights."""
    from transformers import AutoModelForCausalLM

    from tests.hf_util import hf_config_from_model

    m, _ = model_for("llama3.2-1b", "H100", batch, 2)
    with torch.device("cuda"):
        hf = AutoModelForCausalLM.from_config(hf_config_from_model(m, "sdpa"), dtype=torch.bfloat16)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else 0.02 * torch.randn_like(p))
    return m, hf


def _two_layer_run(batch: int, ksplits: dict[str, int] | None = None) -> float:
    """A 2-layer Llama-3.2-1B with random weights: 8-token prompts, 8 greedy steps; the worst
    relative error of the logits against HF's."""
    m, hf = _two_layer_hf(batch)
    prompt = torch.randint(0, m.vocab_size, (batch, 8), device="cuda")
    with torch.no_grad():
        seq, hf_logits = hf_generate(hf, prompt, 8)
    eng = engine_for("llama3.2-1b", "H100", batch, hf, layers=2, ksplits=ksplits)
    tokens = seq.cpu().numpy().astype(np.int32)
    errs = []
    try:
        for t in range(15):
            r = eng.step(tokens[:, t], np.full(batch, t, np.int32), want_logits=True)
            if t >= 7:
                errs.append(rel_err(r[1], hf_logits[t - 7].cpu().numpy()))
    finally:
        eng.close()
    return max(errs)


def test_two_layers_first():
    """First, a 2-layer model: a scheduling bug shows up here, cheaply, as a timeout naming the
    task and counter (or polled q/k/v words); every wait is bounded, so nothing hangs."""
    err = _two_layer_run(1)
    print(f"2-layer run: rel err {err:.2e}")
    assert err <= REL_TOL


def test_stuck_wait_times_out_and_resets():
    """A build whose wait targets one count more than its producers give (STUCK) times out
    within the limit with an error naming the task and counter, instead of hanging; after reset
    the session times out again as it must (no state left behind, the GPU free), and a correct
    kernel in the same process still matches HF."""
    import time

    from ada_mk.runtime.engine import KernelError

    m, hf = _two_layer_hf(1)
    eng = engine_for("llama3.2-1b", "H100", 1, hf, layers=2, defines=STUCK)
    try:
        eng.set_wait_limit(50.0)
        for attempt in range(2):
            t0 = time.perf_counter()
            # The first wait to run out names itself: the stuck down task, or one that waits on it.
            with pytest.raises(KernelError, match=r"timed out: SM \d+, task \w+ layer \d+ index \d+ waited on") as e:
                eng.step(np.zeros(1, np.int32), np.zeros(1, np.int32))
            print(e.value)
            took = time.perf_counter() - t0
            print(f"stuck step {attempt}: timed out after {1e3 * took:.0f} ms (limit 50 ms)")
            assert took < 2.0  # the limit, plus a launch and the blocks leaving
            eng.reset()
    finally:
        eng.close()
    err = _two_layer_run(1)
    print(f"2-layer run after the stuck kernel: rel err {err:.2e}")
    assert err <= REL_TOL


def test_gate_up_ksplit_two_layers():
    """Gate/up K-split by force (no shipped plan picks it): the down tasks sum the gate/up float
    partials themselves (stage_silu_mul). Batch 4, against HF."""
    err = _two_layer_run(4, {"gate_up": 2})
    print(f"2-layer run, gate/up K-split 2: rel err {err:.2e}")
    assert err <= REL_TOL


def test_qwen3_two_layers_first():
    """A 2-layer Qwen3-0.6B, batch 4: a fault in the q/k head norms' barrier and reduction inside
    the attention task shows up here as a timeout naming the wait, or as logits off HF's, before
    the full models run."""
    from ada_mk.bench.baselines import random_hf_model

    m, _ = model_for("qwen3-0.6b", "H100", 4, 2)
    hf = random_hf_model(m, seed=_seed(), attn_implementation="sdpa")
    prompt = torch.randint(0, m.vocab_size, (4, 8), device="cuda")
    with torch.no_grad():
        seq, hf_logits = hf_generate(hf, prompt, 8)
    eng = engine_for("qwen3-0.6b", "H100", 4, hf, layers=2)
    tokens = seq.cpu().numpy().astype(np.int32)
    errs = []
    try:
        for t in range(15):
            r = eng.step(tokens[:, t], np.full(4, t, np.int32), want_logits=True)
            if t >= 7:
                errs.append(rel_err(r[1], hf_logits[t - 7].cpu().numpy()))
    finally:
        eng.close()
    print(f"qwen3 2-layer run: rel err {max(errs):.2e}")
    assert max(errs) <= REL_TOL


CASES = [
    ("llama3.2-1b", "H100", 1, 1),
    ("llama3.2-1b", "H100", 1, 500),
    ("llama3.2-1b", "H100", 4, 1),
    ("llama3.2-1b", "H100", 4, 500),
    ("llama3.2-1b", "L20", 1, 500),
    ("qwen2.5-0.5b", "H100", 1, 500),
    ("qwen2.5-0.5b", "H100", 4, 1),
    ("mistral-7b", "H100", 1, 500),
    ("llama3-8b", "H100", 1, 1),
    ("llama3-8b", "H100", 1, 500),
    ("llama3-8b", "H100", 4, 1),
    ("llama3-8b", "H100", 4, 500),
    # Qwen3 from its HF config.json as published: q/k head RMSNorm before RoPE, head_dim 128
    # independent of hidden / heads (0.6B), tied embeddings (0.6B).
    ("qwen3-0.6b", "H100", 1, 500),
    ("qwen3-0.6b", "H100", 4, 1),
    ("qwen3-0.6b", "H100", 4, 500),
    ("qwen3-0.6b", "L20", 1, 500),
    ("qwen3-8b", "H100", 1, 500),
    ("qwen3-8b", "H100", 4, 500),
]


@pytest.mark.parametrize("config,gpu,batch,prompt_len", CASES, ids=[f"{c}-{g}-bs{b}-p{p}" for c, g, b, p in CASES])
def test_logits_match_hf(config, gpu, batch, prompt_len):
    hf = hf_model(config)
    # A greedy run from one random token can settle into a loop whose every step has a top-2 gap
    # within bf16 noise (session 12: 0 clear steps of 64, all 64 agreeing); then another prompt is
    # drawn, up to three, so that greedy agreement is checked on some clear step.
    for _ in range(3):
        clear = _decode_and_compare(hf, config, gpu, batch, prompt_len)
        if clear:
            break
    assert clear > 0, "no step with a clear top-2 margin in three random prompts"


def _decode_and_compare(hf, config: str, gpu: str, batch: int, prompt_len: int, make_engine=None) -> int:
    """Decode DECODE_STEPS tokens after a random prompt with HF and with the kernel (engine_for's,
    or make_engine()'s); check the logits, and greedy agreement with float32 on the clear steps.
    Returns how many were clear."""
    V = hf.config.vocab_size
    prompt = torch.randint(0, V, (batch, prompt_len), device="cuda")
    with torch.no_grad():
        seq, hf_logits = hf_generate(hf, prompt, DECODE_STEPS)
    eng = make_engine() if make_engine is not None else engine_for(config, gpu, batch, hf)
    try:
        tokens = seq.cpu().numpy().astype(np.int32)
        ours = []
        for t in range(prompt_len + DECODE_STEPS - 1):
            want = t >= prompt_len - 1
            r = eng.step(tokens[:, t], np.full(batch, t, np.int32), want_logits=want)
            if want:
                ours.append(r[1])
    finally:
        eng.close()
    hf_np = [h.cpu().numpy() for h in hf_logits]
    errs = [rel_err(o, h) for o, h in zip(ours, hf_np)]
    ref = float32_logits(hf, seq[:, :-1])[:, prompt_len - 1:].cpu().numpy()
    ours = np.stack(ours, axis=1)  # [B, steps, V]
    ours_f32 = rel_err(ours, ref)
    hf_f32 = rel_err(np.stack(hf_np, axis=1), ref)
    print(f"{config} {gpu} bs{batch} prompt {prompt_len}: rel err vs HF bf16 max {max(errs):.2e} "
          f"mean {np.mean(errs):.2e}; vs float32: ours {ours_f32:.2e}, HF bf16 {hf_f32:.2e}")
    assert max(errs) <= REL_TOL, errs

    # Greedy agreement with float32 wherever its top-2 margin is clear: wider than CLEAR_MARGIN
    # and than 8x the bf16 noise of that step (the rms distance of HF's own bf16 logits from
    # float32), so a gap bf16 arithmetic can close is not counted as clear.
    top2 = np.sort(ref, axis=-1)[..., -2:]
    noise = np.sqrt(((np.stack(hf_np, axis=1) - ref) ** 2).mean(-1))
    clear = (top2[..., 1] - top2[..., 0]) > np.maximum(CLEAR_MARGIN, 8 * noise)
    agree = ours.argmax(-1) == ref.argmax(-1)
    print(f"  greedy vs float32: {int(clear.sum())} clear steps of {clear.size}, "
          f"{int((agree & clear).sum())} agree; {int(agree.sum())} agree overall")
    assert agree[clear].all()
    return int(clear.sum())


def test_staggered_positions_match_hf():
    """Batch 4 with a different position per sequence: prompts of 1, 37, 200 and 500 tokens that
    end together, then 64 decode steps; each sequence against HF run alone."""
    config, lengths = "llama3.2-1b", [1, 37, 200, 500]
    hf = hf_model(config)
    V = hf.config.vocab_size
    seqs, refs = [], []
    for n in lengths:
        with torch.no_grad():
            s, l = hf_generate(hf, torch.randint(0, V, (1, n), device="cuda"), DECODE_STEPS)
        seqs.append(s[0].cpu().numpy().astype(np.int32))
        refs.append(np.stack([x[0].cpu().numpy() for x in l]))
    eng = engine_for(config, "H100", 4, hf)
    T = max(lengths)
    ours = [[] for _ in lengths]
    try:
        for step in range(T + DECODE_STEPS - 1):
            # Sequence b starts at step T - len_b; before that it rewrites position 0 with token 0.
            pos = np.array([max(0, step - (T - n)) for n in lengths], np.int32)
            tok = np.array([s[p] if step >= T - n else 0 for s, p, n in zip(seqs, pos, lengths)], np.int32)
            _, logits = eng.step(tok, pos, want_logits=True)
            for b, n in enumerate(lengths):
                if pos[b] >= n - 1 and step >= T - n:
                    ours[b].append(logits[b])
    finally:
        eng.close()
    for b, n in enumerate(lengths):
        errs = [rel_err(o, h) for o, h in zip(ours[b], refs[b])]
        print(f"sequence {b} (prompt {n}): max rel err {max(errs):.2e}")
        assert len(errs) == DECODE_STEPS and max(errs) <= REL_TOL


def test_bitwise_deterministic():
    """The same 16 steps, 10 times from a fresh cache: identical logits, bit for bit."""
    hf = hf_model("llama3.2-1b")
    eng = engine_for("llama3.2-1b", "H100", 1, hf)
    toks = np.random.default_rng().integers(0, hf.config.vocab_size, 16).astype(np.int32)
    runs = []
    try:
        for _ in range(10):
            eng.reset()
            out = [eng.step(toks[t:t + 1], np.array([t], np.int32), want_logits=True)[1] for t in range(16)]
            runs.append(np.stack(out))
    finally:
        eng.close()
    for r in runs[1:]:
        assert np.array_equal(r.view(np.uint32), runs[0].view(np.uint32))


def test_one_launch_per_step():
    """Count kernels with CUPTI (torch.profiler) around one decode step: exactly one, ours."""
    from torch.profiler import ProfilerActivity, profile

    hf = hf_model("llama3.2-1b")
    eng = engine_for("llama3.2-1b", "H100", 1, hf)
    try:
        eng.step(np.array([1], np.int32), np.array([0], np.int32))  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            eng.step(np.array([2], np.int32), np.array([1], np.int32))
            torch.cuda.synchronize()
    finally:
        eng.close()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()
               and "memset" not in e.name.lower()]
    names = sorted({e.name for e in kernels})
    print(f"kernels launched in one step: {len(kernels)}: {names}")
    assert len(kernels) == 1 and names == [eng.plan.kernel_name]


def test_bad_inputs_refused_before_launch():
    from ada_mk.runtime.engine import KernelError

    hf = hf_model("llama3.2-1b")
    eng = engine_for("llama3.2-1b", "H100", 1, hf)
    try:
        with pytest.raises(KernelError, match="positions must be in"):
            eng.step(np.array([1], np.int32), np.array([eng.plan.deploy.max_context], np.int32))
        with pytest.raises(KernelError, match="plan's batch"):
            eng.step(np.array([1, 2], np.int32), np.array([0, 0], np.int32))
        with pytest.raises(KernelError, match="token ids"):
            eng.step(np.array([hf.config.vocab_size], np.int32), np.array([0], np.int32))
    finally:
        eng.close()
