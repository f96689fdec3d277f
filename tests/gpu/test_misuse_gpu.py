"""Misuse and faults of the C ABI on the GPU get error codes, not crashes (issue 34, item 3):
NaN / Inf in the weights (adamk_check_weights), out of GPU memory at create, two sessions of
different kernels in one process, destroy twice and use after destroy, calls from several threads.

Libraries: SmolLM2-135M (tests/gpu/test_capi_gpu.py's), its 2-layer cut (a different kernel), and
the 2-layer cut with fp8 weights, all with random weights.
    ADAMK_CACHE=.devbuild python -m tests.gpu.test_misuse_gpu      # prebuild
"""
from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np
import pytest

from ada_mk.runtime.capi import ADAMK_ERR_ARGUMENT, ADAMK_ERR_MEMORY, ADAMK_ERR_WEIGHTS, ADAMK_OK, SharedLibrary
from ada_mk.runtime.weights import pack_weights
from ada_mk.runtime.weights_check import check_packed
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

from .kernels import model_for
from .test_capi_gpu import library_for, make_smollm2, packed, plan, reference, weights  # noqa: F401

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu


def small_plan(weights_format: str = "bf16"):
    """SmolLM2-135M cut to 2 layers: another kernel (its own symbol and library)."""
    return make_plan(*model_for("smollm2-135m", "H100", 1, 2, weights=weights_format))


def random_weights(p, rng) -> dict[str, np.ndarray]:
    from ada_mk.ir.build import build_decode_graph

    g = build_decode_graph(p.model, None, batch=p.batch, max_context=p.deploy.max_context)
    return {t.name: ((1 + 0.1 * rng.standard_normal(t.shape)) if t.name.endswith("norm.weight")
                     else 0.02 * rng.standard_normal(t.shape)).astype(np.float32) for t in g.weights()}


@pytest.fixture(scope="module")
def small():
    """(plan, library path, packed weights) of the 2-layer kernel."""
    p = small_plan()
    return p, library_for(p).library, pack_weights(make_layout(p), random_weights(p, np.random.default_rng(7)))


def run(lib: SharedLibrary, tokens: list[int]) -> list[np.ndarray]:
    return [lib.decode([t], [pos], want_logits=True)[1] for pos, t in enumerate(tokens)]


# ---- (a) NaN / Inf in the weights ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_check_weights_names_the_first_nan(fmt: str) -> None:
    """Clean weights pass; a NaN or Inf put in a random element of a random tensor (bf16), or in a
    random fp8 code or scale of the packed buffer, fails with ADAMK_ERR_WEIGHTS and the message
    NumPy's scan of the same buffer gives (tests/test_weights_check.py checks that one against the
    element's place). Host-copied and borrowed (in place) weights alike."""
    p = small_plan(fmt)
    layout = make_layout(p)
    rng = np.random.default_rng()
    w = random_weights(p, rng)
    lib = SharedLibrary(library_for(p).library)
    good = pack_weights(layout, w)
    with lib.create(good, check_weights=True):
        lib.check_weights()
    if fmt == "bf16":
        names = sorted(w)
        name = names[rng.integers(len(names))]
        idx = tuple(int(rng.integers(s)) for s in w[name].shape)
        w[name][idx] = rng.choice([np.nan, np.inf, -np.inf])
        bad = pack_weights(layout, w)
    else:
        bad = good.view(np.uint8).copy()
        seg = [s for s in layout.weights.per_layer.values() if s.linear is not None][0]
        t = seg.linear
        layer = int(rng.integers(p.model.num_hidden_layers))
        start = (layout.weights.layer_base + seg.offset + layer * layout.weights.layer_stride) * 2
        chunk = start + int(rng.integers(t.tasks * t.chunks)) * t.chunk_bytes
        bad[chunk + t.code_bytes + 4 * int(rng.integers(t.chunk_rows * t.scales_per_row)):][:4] = \
            np.array([np.nan], "<f4").view(np.uint8)
        bad[chunk + int(rng.integers(t.code_bytes))] = 0xFF  # an fp8 NaN in the same chunk
        bad = bad.view(np.uint16)
    with pytest.raises(ValueError) as e:
        check_packed(layout, bad)
    want = str(e.value)
    with lib.create(bad):  # create does not scan
        assert lib.lib.adamk_check_weights(lib._session) == ADAMK_ERR_WEIGHTS
        assert lib.last_error() == want
    device = torch.from_numpy(bad.view(np.int16)).cuda()
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        lib.create(device.data_ptr(), borrow=True, check_weights=True)
    assert not lib.is_open  # closed again


# ---- (b) out of GPU memory at create -------------------------------------------------------------

def test_out_of_memory_at_create(plan, packed) -> None:
    """With all but 64 MB of the GPU taken, create fails with ADAMK_ERR_MEMORY and the sizes, frees
    what it took, and works once the memory is back."""
    lib = SharedLibrary(library_for(plan).library)
    with lib.create(packed):  # the library's module and runtime state loaded before measuring
        pass
    torch.cuda.synchronize()
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(free - 64 * 2**20, dtype=torch.uint8, device="cuda")
    try:
        before, _ = torch.cuda.mem_get_info()
        session = ctypes.c_void_p()
        rc = lib.lib.adamk_create(packed.ctypes.data, packed.nbytes, 0, 0, ctypes.byref(session))
        msg = lib.last_error()
        print(msg)
        assert rc == ADAMK_ERR_MEMORY and session.value is None
        assert "out of GPU memory on device 0" in msg and "weights" in msg and "KV cache" in msg and "free" in msg
        assert f"{packed.nbytes / 1e9:.3f} GB" in msg
        after, _ = torch.cuda.mem_get_info()
        assert after >= before - 2 * 2**20  # nothing kept (the runtime's own context aside)
        # Borrowed weights need no copy: the message leaves them out of the sum.
        rc = lib.lib.adamk_create(hog.data_ptr(), packed.nbytes, 0, 2, ctypes.byref(session))
        assert rc in (ADAMK_OK, ADAMK_ERR_MEMORY)
        if rc == ADAMK_OK:
            lib.lib.adamk_destroy(session)
        else:
            assert "borrowed" in lib.last_error()
    finally:
        del hog
        torch.cuda.empty_cache()
    with lib.create(packed):
        lib.decode([1], [0])


# ---- (c) two sessions of different kernels in one process ----------------------------------------

def test_two_kernels_side_by_side(plan, packed, small, reference) -> None:
    """SmolLM2 and its 2-layer cut loaded at once, steps interleaved: each gives bitwise the logits
    it gives alone; a session of one library is refused by the other."""
    fed = reference[0][:6]
    p2, path2, packed2 = small
    a, b = SharedLibrary(library_for(plan).library), SharedLibrary(path2)
    assert a.version != b.version
    with a.create(packed):
        alone_a = run(a, fed)
    with b.create(packed2):
        alone_b = run(b, fed)
    with a.create(packed), b.create(packed2):
        for pos, t in enumerate(fed):
            _, la = a.decode([t], [pos], want_logits=True)
            _, lb = b.decode([t], [pos], want_logits=True)
            np.testing.assert_array_equal(la, alone_a[pos])
            np.testing.assert_array_equal(lb, alone_b[pos])
        assert b.lib.adamk_reset(a._session) == ADAMK_ERR_ARGUMENT
        assert "not a live session of this library" in b.last_error()
        b.lib.adamk_destroy(a._session)  # ignored: a's session lives on
        a.decode([fed[0]], [0])


# ---- (d) destroy twice, use after destroy --------------------------------------------------------

def test_destroy_twice_and_use_after_destroy(small) -> None:
    _, path, packed2 = small
    lib = SharedLibrary(path)
    lib.create(packed2)
    s = lib._session.value
    lib.lib.adamk_destroy(s)
    lib.lib.adamk_destroy(s)  # no crash: ignored
    assert "ignored" in lib.last_error()
    tok = np.zeros(1, np.int32)
    i32p = ctypes.POINTER(ctypes.c_int32)
    assert lib.lib.adamk_decode(s, tok.ctypes.data_as(i32p), tok.ctypes.data_as(i32p), tok.ctypes.data_as(i32p),
                                None) == ADAMK_ERR_ARGUMENT
    assert "not a live session" in lib.last_error()
    lib._session = ctypes.c_void_p()  # already destroyed above
    with lib.create(packed2):  # the library is still good
        lib.decode([1], [0])


# ---- (e) calls from several threads --------------------------------------------------------------

def test_threads_share_a_session(small) -> None:
    """Eight threads decode on one session at once (ctypes lets go of the GIL in the call): the
    library serialises them, so each step is whole and, over a cache filled beforehand with the
    same tokens, gives bitwise the logits of a serial run at its position."""
    p, path, packed2 = small
    rng = np.random.default_rng()
    fed = [int(x) for x in rng.integers(0, p.model.vocab_size, 32)]
    lib = SharedLibrary(path)
    with lib.create(packed2):
        serial = run(lib, fed)
        errors: list[str] = []

        def worker(seed: int) -> None:
            r = np.random.default_rng(seed)
            for _ in range(40):
                pos = int(r.integers(len(fed)))
                _, lg = lib.decode([fed[pos]], [pos], want_logits=True)
                if not np.array_equal(lg, serial[pos]):
                    errors.append(f"position {pos}: logits differ from the serial run")

        threads = [threading.Thread(target=worker, args=(int(rng.integers(2**31)),)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]


def test_destroy_while_other_threads_decode(small) -> None:
    """Threads decoding while the session is destroyed: each call finishes or gets
    ADAMK_ERR_ARGUMENT; nothing crashes, and the library makes new sessions afterwards."""
    _, path, packed2 = small
    lib = SharedLibrary(path)
    lib.create(packed2)
    s = lib._session.value
    codes: list[int] = []
    started = threading.Barrier(5)

    def worker() -> None:
        tok = np.zeros(1, np.int32)
        i32p = ctypes.POINTER(ctypes.c_int32)
        args = [tok.ctypes.data_as(i32p)] * 3
        started.wait()
        while True:
            rc = lib.lib.adamk_decode(s, *args, None)
            codes.append(rc)
            if rc != ADAMK_OK:
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    lib.lib.adamk_destroy(s)
    lib._session = ctypes.c_void_p()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert set(codes) <= {ADAMK_OK, ADAMK_ERR_ARGUMENT} and codes.count(ADAMK_ERR_ARGUMENT) == 4
    with lib.create(packed2):
        lib.decode([1], [0])


if __name__ == "__main__":
    for pl in (make_smollm2(), small_plan(), small_plan("fp8")):
        art = library_for(pl, log=lambda s: print("  " + s[:160], file=sys.stderr))
        print(f"{pl.kernel_name}: {art.library}", file=sys.stderr)
