"""Long runs lose nothing (issue 34, item 4): 100,000 decode steps chained on the device through
adamk_decode_async, checked against short replays, with host and device memory flat; and a reset
between sequences leaves no state behind.

The kernel: SmolLM2-135M cut to 2 layers (the smallest the GPU tests build), batch 1, 1,024
positions, random weights. The chain is sequences of 1,024 steps each (the KV cache's length):
sequence k starts at position 0 with its own first token, then each step feeds on the one
before it (its next token and next position); the step that starts a sequence reads its position
from a zero word instead, rewinding the cache. Nothing waits on the host but the memory checks.
Every step's next token and, at a few positions of a few sequences, the logits are kept; after
the run each of those sequences is replayed alone on a reset session and must give the same
tokens and bitwise the same logits.
    ADAMK_CACHE=.devbuild python -m tests.gpu.test_long_run_gpu      # prebuild
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from ada_mk.runtime.capi import SharedLibrary
from ada_mk.runtime.weights import pack_weights
from ada_mk.search.layout import make_layout

from .test_capi_gpu import library_for
from .test_misuse_gpu import random_weights, small_plan

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

STEPS = 100_000
CHECKS = 10  # memory measured after every STEPS / CHECKS steps
LOGIT_POSITIONS = (0, 1, 2, 511, 1022, 1023)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Chain:
    """Device buffers of a chained run of `steps` steps in sequences of `length` (batch 1)."""

    def __init__(self, lib: SharedLibrary, steps: int, length: int, starts: torch.Tensor, keep: dict[int, int]):
        """keep: step -> row of self.logits, the steps whose logits are kept."""
        self.lib, self.steps, self.length = lib, steps, length
        self.starts = starts  # int32 [sequences], each sequence's first token
        self.zero = torch.zeros(1, dtype=torch.int32, device="cuda")
        self.pos = torch.zeros(2, dtype=torch.int32, device="cuda")  # next positions, ping-pong
        self.out = torch.full((steps,), -1, dtype=torch.int32, device="cuda")  # step t's next token
        self.keep = keep
        self.logits = torch.zeros((max(len(keep), 1), lib.vocab_size), dtype=torch.float32, device="cuda")

    def launch(self, stream: int, t: int, first: int = 0) -> None:
        """Step t (of the whole run) on `stream`; `first`: this chain's first step (a replay starts
        at a sequence's), so its buffers hold steps first .. first + steps - 1. Addresses are
        computed, not indexed, to keep the host's share of a step small."""
        seq, p = divmod(t, self.length)
        i = t - first
        out, pos = self.out.data_ptr(), self.pos.data_ptr()
        tok = self.starts.data_ptr() + 4 * seq if p == 0 else out + 4 * (i - 1)
        at = self.zero.data_ptr() if p == 0 else pos + 4 * ((i - 1) % 2)
        row = self.keep.get(t)
        logits = self.logits.data_ptr() + 4 * self.lib.vocab_size * row if row is not None else 0
        self.lib.decode_async(stream, tok, at, out + 4 * i, pos + 4 * (i % 2), logits)


@pytest.fixture(scope="module")
def session():
    p = small_plan()
    packed = pack_weights(make_layout(p), random_weights(p, np.random.default_rng(11)))
    lib = SharedLibrary(library_for(p).library)
    lib.create(packed)
    yield p, lib, packed
    lib.close()


def test_100k_chained_steps_equal_short_replays(session) -> None:
    p, lib, _ = session
    length = p.deploy.max_context
    sequences = -(-STEPS // length)
    rng = np.random.default_rng()
    starts = torch.tensor(rng.integers(0, p.model.vocab_size, sequences), dtype=torch.int32, device="cuda")
    # Sequences replayed: the first two, one in the middle, the last whole one and the partial last.
    checked = sorted({0, 1, sequences // 2, STEPS // length - 1, sequences - 1})
    keep = {}
    for k in checked:
        for q in LOGIT_POSITIONS:
            if k * length + q < STEPS:
                keep[k * length + q] = len(keep)
    chain = Chain(lib, STEPS, length, starts, keep)
    stream = torch.cuda.Stream()
    s = stream.cuda_stream
    lib.reset()
    rss, free = [], []
    t0 = time.perf_counter()
    for t in range(STEPS):
        chain.launch(s, t)
        if (t + 1) % (STEPS // CHECKS) == 0:
            lib.synchronize(s)
            rss.append(rss_bytes())
            free.append(torch.cuda.mem_get_info()[0])
    lib.synchronize(s)
    took = time.perf_counter() - t0
    print(f"{STEPS} chained steps in {took:.1f} s ({took / STEPS * 1e6:.1f} us/step with the host's enqueueing); "
          f"host RSS {rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB, device free {free[0] / 2**20:.1f} -> "
          f"{free[-1] / 2**20:.1f} MiB")
    out = chain.out.cpu().numpy()
    assert (out >= 0).all() and (out < p.model.vocab_size).all()
    logits = chain.logits.cpu().numpy()
    # Memory: after the first tenth (allocator and caches warm), no growth.
    assert rss[-1] - rss[1] <= 8 * 2**20, [r / 2**20 for r in rss]
    assert free[1] - free[-1] <= 2 * 2**20, [f / 2**20 for f in free]

    for k in checked:  # each alone on a reset session, its steps numbered as in the chain
        first, last = k * length, min((k + 1) * length, STEPS)
        lib.reset()
        rows = {t: keep[t] for t in keep if first <= t < last}
        replay = Chain(lib, last - first, length, starts, {t: i for i, t in enumerate(rows)})
        for t in range(first, last):
            replay.launch(s, t, first)
        lib.synchronize(s)
        np.testing.assert_array_equal(replay.out.cpu().numpy(), out[first:last], err_msg=f"sequence {k}: tokens")
        got = replay.logits.cpu().numpy()
        for i, (t, row) in enumerate(rows.items()):
            np.testing.assert_array_equal(got[i], logits[row], err_msg=f"sequence {k}, position {t - first}: logits")


def test_reset_leaves_no_state(session) -> None:
    """Sequence A, reset, sequence B gives bitwise what B gives on a fresh session; after a reset
    the KV cache is all zeros."""
    p, lib, packed = session
    rng = np.random.default_rng()
    a, b = (rng.integers(0, p.model.vocab_size, 40).tolist() for _ in range(2))

    def run(tokens: list[int]) -> list[np.ndarray]:
        return [lib.decode([t], [pos], want_logits=True)[1] for pos, t in enumerate(tokens)]

    lib.reset()
    run(a)
    lib.reset()
    k_ptr, v_ptr = lib.kv_cache()
    m = p.model
    elems = m.num_hidden_layers * p.batch * m.num_key_value_heads * p.deploy.max_context * m.head_dim
    for ptr in (k_ptr, v_ptr):
        cache = torch.empty(elems, dtype=torch.bfloat16, device="cuda")
        _copy_from(cache, ptr)
        assert int(torch.count_nonzero(cache)) == 0
    after_a = run(b)
    with SharedLibrary(lib.path).create(packed) as fresh:  # a second session of the same library
        alone = [fresh.decode([t], [pos], want_logits=True)[1] for pos, t in enumerate(b)]
    for pos, (x, y) in enumerate(zip(after_a, alone)):
        np.testing.assert_array_equal(x, y, err_msg=f"position {pos}")


def _copy_from(t: torch.Tensor, address: int) -> None:
    from cuda.bindings import driver

    err, = driver.cuMemcpyDtoD(t.data_ptr(), address, t.numel() * t.element_size())
    assert err == driver.CUresult.CUDA_SUCCESS, err


if __name__ == "__main__":
    pl = small_plan()
    art = library_for(pl, log=lambda s: print("  " + s[:160], file=sys.stderr))
    print(f"{pl.kernel_name}: {art.library}", file=sys.stderr)
