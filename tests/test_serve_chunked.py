"""Chunked prefill for adamk-serve, on the CPU: a prompt prefilled chunk by chunk into one slot
(the hybrid PyTorch path over packed weights, and the NumPy reference backend) gives HF
transformers' logits at every chunk's last position and its greedy tokens after; the scheduler
runs at most one chunk between two decode steps while a stream decodes (an instrumented
backend's event log), never writes over a prefilling slot's prefix, and every request gets HF's
greedy tokens for its prompt alone."""
from __future__ import annotations

import dataclasses
import queue
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ada_mk.config import load_config  # noqa: E402
from ada_mk.runtime.hybrid import HybridPrefill  # noqa: E402
from ada_mk.runtime.slots import ReferenceSlots  # noqa: E402
from ada_mk.runtime.weights import bf16_bits_to_float, pack_weights  # noqa: E402
from ada_mk.search.layout import make_layout  # noqa: E402
from ada_mk.search.planner import make_plan  # noqa: E402
from ada_mk.serve.scheduler import Params, Request, Scheduler  # noqa: E402
from tests.hf_util import hf_logits, hf_weights, random_hf_model  # noqa: E402
from tests.smollm2_cases import hf_greedy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH, CONTEXT = 4, 96


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer Llama-shaped model (Hopper batch-4 plan: tiled weights), HF's random weights
    rounded to bf16 so that HF and the packed buffer hold the same numbers."""
    m, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu="H100", batch=BATCH, max_context=CONTEXT)
    m = dataclasses.replace(m, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, vocab_size=320, name="tiny")
    hf = random_hf_model(m, seed=int(np.random.default_rng().integers(1 << 30)))
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    plan = make_plan(m, d)
    return m, plan, make_layout(plan), hf


class _Engine:
    """What HybridPrefill reads of a MegaKernelEngine when given its tensors: plan and layout."""

    def __init__(self, plan, layout) -> None:
        self.plan, self.layout = plan, layout

    def synchronize(self) -> None:
        pass


def cpu_hybrid(tiny, rng, keep_weights: bool = False) -> HybridPrefill:
    """HybridPrefill on the CPU over the packed weights, its K/V cache filled with noise (which a
    read of the wrong positions would pick up)."""
    m, plan, layout, hf = tiny
    wbuf = torch.from_numpy(bf16_bits_to_float(pack_weights(layout, hf_weights(hf)))).to(torch.bfloat16)
    n = layout.kv_elems_per_layer * m.num_hidden_layers
    caches = [torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).to(torch.bfloat16) for _ in range(2)]
    return HybridPrefill(_Engine(plan, layout), tensors=(wbuf, *caches), keep_weights=keep_weights)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_cuts(rng, T: int, k: int) -> list[tuple[int, int]]:
    """T positions cut into k+1 chunks at random places: [(start, end), ...]."""
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, T), size=min(k, T - 1), replace=False))
    edges = [0, *cuts, T]
    return list(zip(edges[:-1], edges[1:]))


# Chunks after the first attend over K and V as the cache holds them (bf16) where a one-shot
# prefill attends over float32 ones: logits agree with HF to this relative norm, not to 1e-4.
CHUNK_TOL = 2e-2


def test_hybrid_chunks_match_hf_and_one_shot(tiny) -> None:
    m, _, _, hf = tiny
    rng = np.random.default_rng()
    T, slot = int(rng.integers(16, 40)), int(rng.integers(BATCH))
    ids = rng.integers(0, m.vocab_size, T)
    want = hf_logits(hf, ids)

    one = cpu_hybrid(tiny, rng)
    _, lg = one.prefill(ids, slot=slot)
    assert rel(lg[0], want[-1]) <= 1e-4

    h = cpu_hybrid(tiny, rng)
    shape = h.cache_shape
    k0, v0 = h.k_cache.view(shape).clone(), h.v_cache.view(shape).clone()
    for a, b in random_cuts(rng, T, int(rng.integers(2, 6))):
        nxt, lg = h.prefill(ids[a:b], slot=slot, start=a)
        assert rel(lg[0], want[b - 1]) <= CHUNK_TOL, (a, b, rel(lg[0], want[b - 1]))
        assert nxt.shape == (1,) and int(nxt[0]) == int(np.argmax(lg[0]))
    kc, vc = h.k_cache.view(shape), h.v_cache.view(shape)
    others = [s for s in range(BATCH) if s != slot]
    assert torch.equal(kc[:, others], k0[:, others]) and torch.equal(vc[:, others], v0[:, others])
    assert torch.equal(kc[:, slot, :, T:], k0[:, slot, :, T:]) and torch.equal(vc[:, slot, :, T:], v0[:, slot, :, T:])
    ko, vo = one.k_cache.view(shape), one.v_cache.view(shape)
    for got, ref in ((kc, ko), (vc, vo)):  # the same cache as the one-shot prefill's, to bf16 and CHUNK_TOL
        g, r = got[:, slot, :, :T].float(), ref[:, slot, :, :T].float()
        torch.testing.assert_close(g[0], r[0], rtol=1e-2, atol=1e-2)  # layer 0: no past in it
        assert float((g - r).norm() / r.norm()) <= CHUNK_TOL


def test_hybrid_one_token_chunks_decode_hf_greedy(tiny) -> None:
    """Decoding by chunks of one token (each attending over all of the cache before it) gives
    HF's greedy tokens: each token is HF's argmax up to a near-tie, each step's logits HF's."""
    m, _, _, hf = tiny
    rng = np.random.default_rng()
    T, slot, n = int(rng.integers(4, 20)), int(rng.integers(BATCH)), 16
    ids = [int(t) for t in rng.integers(0, m.vocab_size, T)]
    h = cpu_hybrid(tiny, rng)
    nxt, lg = h.prefill(np.asarray(ids), slot=slot)
    seq, logits = [], [lg[0]]
    for i in range(n):
        seq.append(int(nxt[0]))
        nxt, lg = h.prefill(np.asarray([seq[-1]]), slot=slot, start=T + i)
        logits.append(lg[0])
    want = hf_logits(hf, ids + seq)
    for i, tok in enumerate(seq):
        row = want[T - 1 + i]
        assert rel(logits[i], row) <= CHUNK_TOL, i
        assert row[tok] >= row.max() - 1e-2 * np.abs(row).max(), (i, tok, int(row.argmax()))
    if all(want[T - 1 + i].argmax() == t for i, t in enumerate(seq)):  # no near-tie flipped a token
        assert seq == hf_greedy(hf, ids, n)


def test_kept_weights_change_nothing(tiny) -> None:
    """keep_weights: the second and later prefills read the kept matrices and give bit for bit
    what converting the weights again gives; kept_bytes() is what they take."""
    m, _, _, hf = tiny
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 30))
    ids = rng.integers(0, m.vocab_size, 24)
    plain = cpu_hybrid(tiny, np.random.default_rng(seed))
    kept = cpu_hybrid(tiny, np.random.default_rng(seed), keep_weights=True)
    assert plain.kept is None and kept.kept == {}
    for a, b in [(0, 9), (9, 10), (10, 24)]:
        got = [h.prefill(ids[a:b], slot=3, start=a)[1] for h in (plain, kept)]
        assert np.array_equal(got[0], got[1])
        assert torch.equal(plain.k_cache, kept.k_cache) and torch.equal(plain.v_cache, kept.v_cache)
    assert sum(t.numel() * t.element_size() for t in kept.kept.values()) == kept.kept_bytes()
    assert ("embed", None) not in kept.kept and ("wdown", m.num_hidden_layers - 1) in kept.kept


def test_reference_chunks_match_hf_and_one_shot(tiny) -> None:
    m, _, _, hf = tiny
    rng = np.random.default_rng()
    w = hf_weights(hf)
    T, slot = int(rng.integers(16, 40)), int(rng.integers(3))
    ids = [int(t) for t in rng.integers(0, m.vocab_size, T)]
    want = hf_logits(hf, ids)
    one = ReferenceSlots(m, w, 3, CONTEXT)
    first, lg1 = one.prefill(slot, ids)
    slots = ReferenceSlots(m, w, 3, CONTEXT)
    slots.ex.k_cache[:] = rng.standard_normal(slots.ex.k_cache.shape)
    slots.ex.v_cache[:] = rng.standard_normal(slots.ex.v_cache.shape)
    k0 = slots.ex.k_cache.copy()
    for a, b in random_cuts(rng, T, int(rng.integers(2, 6))):
        tok, lg = slots.prefill_chunk(slot, ids[a:b], a)
        assert rel(lg, want[b - 1]) <= 1e-4, (a, b)
    np.testing.assert_allclose(lg, lg1, rtol=1e-5, atol=1e-5)
    assert tok == first == int(np.argmax(want[-1]))
    others = [s for s in range(3) if s != slot]
    np.testing.assert_array_equal(slots.ex.k_cache[:, others], k0[:, others])
    np.testing.assert_allclose(slots.ex.k_cache[:, slot, :, :T], one.ex.k_cache[:, slot, :, :T], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache"):
        slots.prefill_chunk(slot, ids, CONTEXT - 1)


# ------------------------------------------------------------------------------ the scheduler
class Recording(ReferenceSlots):
    """The reference backend logging each call with the slots whose stream decodes at that
    moment (its request has had its first token): ("chunk", slot, start, tokens, decoding) and
    ("step", tokens, positions, decoding)."""

    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.events: list[tuple] = []
        self.scheduler: Scheduler | None = None

    def _decoding(self) -> list[int]:
        return [b for b, r in enumerate(self.scheduler.slots) if r is not None and r.first_token_at is not None]

    def prefill_chunk(self, slot, tokens, start):
        self.events.append(("chunk", slot, start, list(tokens), self._decoding()))
        return super().prefill_chunk(slot, tokens, start)

    def step(self, tokens, positions, want_logits):
        self.events.append(("step", tokens.copy(), positions.copy(), self._decoding()))
        return super().step(tokens, positions, want_logits)


class Silent:
    """A stream decoder that makes no text (these tests compare tokens)."""

    def push(self, tok: int) -> str:
        return ""

    def flush(self) -> str:
        return ""


def run_requests(backend: Recording, jobs: list[tuple[list[int], int]], chunk: int) -> list[Request]:
    sched = Scheduler(backend, [], prefill_chunk=chunk, max_queue=len(jobs))
    backend.scheduler = sched
    reqs = [Request(p, Params(max_tokens=n, temperature=0, ignore_eos=True), Silent()) for p, n in jobs]
    for r in reqs:  # all queued before the thread starts: the order below is the scheduler's, not a race's
        sched.submit(r)
    sched.start()
    for r in reqs:
        while True:
            kind, value = r.events.get(timeout=120)
            if kind != "text":
                assert (kind, value) == ("done", "length"), value
                break
    assert sched.drain(30)
    return reqs


def test_one_chunk_between_steps_and_each_request_as_alone(tiny) -> None:
    m, _, _, hf = tiny
    rng = np.random.default_rng()
    chunk, batch = 8, 3
    # A short prompt first (it decodes after one chunk), then long ones, more than the slots.
    jobs = [([int(t) for t in rng.integers(0, m.vocab_size, 4)], 40)]
    jobs += [([int(t) for t in rng.integers(0, m.vocab_size, rng.integers(9, 60))], int(rng.integers(5, 30)))
             for _ in range(6)]
    backend = Recording(m, hf_weights(hf), batch, CONTEXT)
    reqs = run_requests(backend, jobs, chunk)

    for (prompt, n), r in zip(jobs, reqs):  # each its own greedy tokens, as alone (HF: the oracle)
        assert r.out == hf_greedy(hf, prompt, n)

    steps = [i for i, e in enumerate(backend.events) if e[0] == "step"]
    assert steps and all(backend.events[i][3] for i in steps)  # no step while nothing decodes
    between, busy_chunks = [], 0
    for e in backend.events:
        if e[0] == "step":
            between.append(0)
        elif e[4]:  # a chunk while a stream decodes
            busy_chunks += 1
            if between:
                between[-1] += 1
    assert max(between) <= 1, between
    assert busy_chunks >= 6  # the long prompts went in chunks next to running streams

    prompts = [p for p, _ in jobs]
    current: dict[int, tuple[list[int], int]] = {}  # slot -> (its prompt, positions its chunks wrote)
    seen = []
    for e in backend.events:
        if e[0] == "chunk":
            _, slot, start, tokens, _ = e
            assert 1 <= len(tokens) <= chunk
            if start == 0:
                (p,) = [p for p in prompts if p[:len(tokens)] == tokens]
                current[slot] = (p, 0)
                seen.append(p)
            p, at = current[slot]
            assert start == at and tokens == p[at:at + len(tokens)]  # continues where the last chunk ended
            current[slot] = (p, at + len(tokens))
        else:
            _, tokens, positions, decoding = e
            for slot, (p, at) in current.items():
                if at < len(p):  # mid-prefill: fed where its next chunk starts, never inside its prefix
                    assert slot not in decoding and (positions[slot], tokens[slot]) == (at, p[at])
                elif slot in decoding:
                    assert positions[slot] >= len(p)
    assert sorted(seen) == sorted(prompts)


def test_chunks_back_to_back_while_nothing_decodes(tiny) -> None:
    """With no stream decoding there is no step to keep: the first prompt's chunks run one after
    the other, and its first token comes before any step."""
    m, _, _, hf = tiny
    rng = np.random.default_rng()
    prompt = [int(t) for t in rng.integers(0, m.vocab_size, 37)]
    backend = Recording(m, hf_weights(hf), 2, CONTEXT)
    (r,) = run_requests(backend, [(prompt, 3)], 5)
    kinds = [e[0] for e in backend.events]
    assert kinds == ["chunk"] * 8 + ["step"] * 2
    assert r.out == hf_greedy(hf, prompt, 3)


def test_cancel_mid_prefill_frees_the_slot(tiny) -> None:
    """A request cancelled between two of its chunks stops there; the one behind it gets the
    slot and its own tokens."""
    m, _, _, hf = tiny
    rng = np.random.default_rng()

    class CancelAfterFirstChunk(Recording):
        def prefill_chunk(self, slot, tokens, start):
            out = super().prefill_chunk(slot, tokens, start)
            if start == 0 and self.scheduler.slots[slot].prompt == long:
                self.scheduler.slots[slot].cancel()
            return out

    short = [int(t) for t in rng.integers(0, m.vocab_size, 3)]
    long = [int(t) for t in rng.integers(0, m.vocab_size, 30)]
    after = [int(t) for t in rng.integers(0, m.vocab_size, 12)]
    backend = CancelAfterFirstChunk(m, hf_weights(hf), 2, CONTEXT)
    sched = Scheduler(backend, [], prefill_chunk=6)
    backend.scheduler = sched
    reqs = [Request(p, Params(max_tokens=n, temperature=0, ignore_eos=True), Silent())
            for p, n in [(short, 20), (long, 5), (after, 6)]]
    for r in reqs:
        sched.submit(r)
    sched.start()
    done = {}
    for r in reqs:
        while (ev := r.events.get(timeout=120))[0] == "text":
            pass
        done[id(r)] = ev
    assert sched.drain(30)
    assert [done[id(r)] for r in reqs] == [("done", "length"), ("done", "cancelled"), ("done", "length")]
    assert sum(1 for e in backend.events if e[0] == "chunk" and e[3] == long[:6]) == 1
    assert reqs[1].out == [] and reqs[2].out == hf_greedy(hf, after, 6)
    with pytest.raises(queue.Empty):
        reqs[1].events.get_nowait()
