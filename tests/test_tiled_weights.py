"""The batched multiply's tiled weights on Hopper (ada_mk.search.layout.Segment.tiling): every
element where the kernel's ring reads it, numpy and torch packing alike, and the torch prefill
reading them back computes what HF computes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ada_mk.config import load_config
from ada_mk.runtime.weights import pack_weights, tile_matrix, untile_matrix
from ada_mk.search.layout import make_layout
from ada_mk.search.planner import make_plan

ROOT = Path(__file__).resolve().parents[1]


def kernel_address(tiling: tuple, k: int, row: int, col: int) -> int:
    """Where adamk/ring.cuh (ChunkCursor::tiled) and tasks.cuh (tile_offset) read element (row, col)."""
    rows, ksplit, kparts, cc = tiling
    kc = k // ksplit
    tile, r = divmod(row, rows)
    group, n = divmod(r, 16)
    split, c = divmod(col, kc)
    part, c = divmod(c, cc)
    idx, chunk = tile * ksplit + split, group * kparts + part
    swizzle = (n & 1) << 5 if cc % 64 == 0 else 0
    return (idx * (rows // 16 * kparts) + chunk) * 16 * cc + n * cc + (c ^ swizzle)


@pytest.mark.parametrize("n,k,tiling", [(100, 256, (32, 2, 2, 64)), (96, 512, (48, 1, 4, 128)), (33, 128, (16, 1, 1, 128)),
                                        (40, 192, (16, 2, 1, 96)), (20, 48, (16, 1, 2, 24))])
def test_tile_matrix_puts_every_element_where_the_kernel_reads_it(n, k, tiling):
    rng = np.random.default_rng()
    m = rng.integers(0, 2**16, size=(n, k), dtype=np.uint16)
    flat = tile_matrix(m, tiling)
    rows = tiling[0]
    assert flat.shape == (-(-n // rows) * rows * k,)
    r, c = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    addr = np.vectorize(lambda a, b: kernel_address(tiling, k, a, b))(r, c)
    assert (flat[addr] == m).all()
    pad = np.ones(flat.shape, bool)
    pad[addr.reshape(-1)] = False
    assert (flat[pad] == 0).all()  # rows past N up to whole tiles
    assert (untile_matrix(flat, (n, k), tiling) == m).all()


def test_torch_packing_and_prefill_read_the_tiled_weights():
    """A Hopper batch-4 plan tiles every linear stage (and gives the tied LM head its own tiled
    copy); numpy and torch pack the same bytes, and torch_prefill over them matches HF."""
    torch = pytest.importorskip("torch")
    from ada_mk.runtime.hybrid import torch_prefill
    from ada_mk.runtime.weights import pack_weights_torch
    from tests.hf_util import hf_logits, hf_weights, random_hf_model

    m, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu="H100", batch=4, max_context=64)
    m = dataclasses.replace(m, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, vocab_size=320, name="tiny-tied")
    plan = make_plan(m, d)
    lay = make_layout(plan)
    segs = {**lay.weights.globals_, **lay.weights.per_layer}
    assert all(segs[s].tiling for s in ("wqkv", "wo", "wgate_up", "wdown", "lm_head"))
    assert m.tie_word_embeddings and segs["lm_head"].offset != segs["embed"].offset
    hf = random_hf_model(m, seed=int(np.random.default_rng().integers(1 << 30)))
    w = hf_weights(hf)
    packed = pack_weights(lay, w)
    t = pack_weights_torch(lay, {k: torch.from_numpy(v) for k, v in w.items()}, device="cpu")
    assert (t.view(torch.int16).numpy().view(np.uint16) == packed).all()
    ids = np.random.default_rng().integers(0, m.vocab_size, size=(1, 9))
    got = torch_prefill(m, lay.weights, t, torch.from_numpy(ids)).numpy()[0]
    want = hf_logits(hf, ids[0])[-1]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), (np.abs(got - want).max(), np.abs(want).max())
