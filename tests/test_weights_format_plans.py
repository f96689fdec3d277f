"""Plans in 8-bit weights: every shipped config gets a valid, tiled plan of whole column blocks;
names, hashes, plan.json; the cost model, the DAG, the IR and adamk-bench's MegaKernel row count
the 8-bit bytes (codes plus float32 scales); bf16 plans are exactly what they were."""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest

from ada_mk.bench.report import plan_step_bytes, step_bytes
from ada_mk.config import load_config
from ada_mk.ir import build_decode_graph
from ada_mk.search.baseline import round_robin_plan
from ada_mk.search.cost import CostModel
from ada_mk.search.dag import Dag
from ada_mk.search.errors import PlanError
from ada_mk.search.explain import report
from ada_mk.search.kernel_rules import decide_kernel_features, tiled_weights
from ada_mk.search.plan import LinearTiling
from ada_mk.search.search import search_plan
from ada_mk.search.shapes import linear_shapes
from ada_mk.search.smem import describe, smem_report
from ada_mk.search.validate import validate_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

# Plan hashes of bf16 plans as main ac8c2c6 (before weights formats) made them: unchanged.
BF16_HASHES = {
    ("llama3-8b", "H100", 1, "search"): "e04ab037e8",
    ("llama3-8b", "H100", 1, "rr"): "49a6fa8216",
    ("llama3-8b", "H100", 4, "search"): "824aeb4627",
    ("llama3-8b", "H100", 4, "rr"): "ecf0adda29",
    ("smollm2-135m", "L20", 4, "search"): "d1be856467",
    ("qwen2.5-0.5b", "L20", 1, "search"): "506527bfcc",
}


def plan_of(config: str, gpu: str, batch: int, kind: str = "search", **kw):
    m, d = load_config(ROOT / "configs" / f"{config}.yaml", gpu=gpu, batch=batch, **kw)
    return search_plan(m, d) if kind == "search" else round_robin_plan(m, d)


@pytest.mark.parametrize("key", sorted(BF16_HASHES))
def test_bf16_plans_unchanged(key) -> None:
    p = plan_of(*key)
    assert p.plan_hash == BF16_HASHES[key]
    assert "weights" not in p.to_json() and "_fp8" not in p.file_stem and "_int8" not in p.file_stem


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("weights", ["fp8", "int8"])
@pytest.mark.parametrize("gpu,batch", [("H100", 1), ("H100", 4), ("L20", 1), ("L20", 4)])
def test_every_shipped_config_plans_in_8bit(cfg: Path, weights: str, gpu: str, batch: int) -> None:
    m, d = load_config(cfg, gpu=gpu, batch=batch, weights=weights)
    for plan in (search_plan(m, d), round_robin_plan(m, d)):
        validate_plan(plan)
        assert plan.smem_bytes <= d.gpu.smem_per_block
        for kind, t in plan.tilings.items():
            assert (t.weights, t.group) == (weights, d.weights_group), kind
            assert t.tiled and t.whole_column_blocks, (kind, t)
            assert t.kc % t.column_block == 0 and t.chunk_cols % 64 == 0, (kind, t)
            if t.group:
                assert t.chunk_cols % t.group == 0
        assert plan.file_stem.endswith(f"_bs{batch}_{weights}")
        assert plan.to_json()["weights"] == weights


@pytest.mark.parametrize("config,gpu,weights", [("llama3.2-1b", "H200", "int8"), ("qwen2.5-0.5b", "L20", "fp8"),
                                                ("llama3.2-3b", "L20", "int8")])
def test_batch_8(config: str, gpu: str, weights: str) -> None:
    """Batch 8 in 8 bits, also where the bf16 plan does not fit Ada's 99 KB (Llama-3.2-3B: half
    the ring bytes)."""
    plan = plan_of(config, gpu, 8, weights=weights)
    validate_plan(plan)
    assert all(t.tiled and t.whole_column_blocks and t.batched for t in plan.tilings.values())
    if config == "llama3.2-3b":
        with pytest.raises(PlanError):
            plan_of(config, gpu, 8)


def test_file_stem_hash_and_json() -> None:
    bf16 = plan_of("llama3-8b", "H100", 1)
    fp8 = plan_of("llama3-8b", "H100", 1, weights="fp8")
    fp8g = plan_of("llama3-8b", "H100", 1, weights="fp8", weights_group=128)
    int8 = plan_of("llama3-8b", "H100", 1, weights="int8")
    int8g = plan_of("llama3-8b", "H100", 1, weights="int8", weights_group=128)
    assert bf16.file_stem == "adamk_llama3_8b_h100_bs1"
    assert fp8.file_stem == "adamk_llama3_8b_h100_bs1_fp8"
    assert fp8g.file_stem == "adamk_llama3_8b_h100_bs1_fp8g128"
    assert int8.file_stem == "adamk_llama3_8b_h100_bs1_int8"
    assert int8g.file_stem == "adamk_llama3_8b_h100_bs1_int8g128"
    hashes = {p.plan_hash for p in (bf16, fp8, fp8g, int8, int8g)}
    assert len(hashes) == 5
    # The same tilings in another format are another plan: the format is part of the hash.
    same = dataclasses.replace(fp8, tilings={k: dataclasses.replace(t, weights="int8", group=32)
                                             for k, t in fp8.tilings.items()},
                               deploy=dataclasses.replace(fp8.deploy, weights="int8", weights_group=32))
    assert same.plan_hash != fp8.plan_hash
    doc = fp8g.to_json()
    assert (doc["weights"], doc["weights_group"]) == ("fp8", 128)
    assert all(t["weights"] == "fp8" and t["group"] == 128 for t in doc["tilings"].values())


def test_a_group_k_is_not_a_multiple_of_is_refused() -> None:
    m, d = load_config(ROOT / "configs" / "smollm2-135m.yaml", weights="fp8", weights_group=128)
    with pytest.raises(PlanError, match="K=576 is no whole 128-column blocks"):
        search_plan(m, d)
    with pytest.raises(PlanError, match="K=576"):
        round_robin_plan(m, d)


def test_tiled_weights_rule() -> None:
    for gpu in ("H100", "L20"):
        for batch in (1, 4):
            _, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu=gpu, batch=batch)
            assert tiled_weights(d) == (gpu == "H100" and batch > 1)
            for w in ("fp8", "int8"):
                _, d = load_config(ROOT / "configs" / "llama3.2-1b.yaml", gpu=gpu, batch=batch, weights=w)
                assert tiled_weights(d)


def test_validate_refuses_mismatched_or_untiled_8bit() -> None:
    plan = plan_of("qwen2.5-0.5b", "L20", 1, weights="int8")
    validate_plan(plan)

    def with_down(**change):
        t = dataclasses.replace(plan.tilings["down"], **change)
        return decide_kernel_features(dataclasses.replace(plan, tilings={**plan.tilings, "down": t}))

    with pytest.raises(PlanError, match="down: tiling streams int8 weights with scale group 64"):
        validate_plan(with_down(group=64))
    with pytest.raises(PlanError, match="down: tiling streams fp8 weights"):
        validate_plan(with_down(weights="fp8", group=32))
    with pytest.raises(PlanError, match="down: .*always tiled"):
        validate_plan(with_down(tiled=False))
    with pytest.raises(PlanError, match="tiling streams bf16 weights"):
        validate_plan(with_down(weights="bf16", group=0))
    t = plan.tilings["qkv"]
    p = decide_kernel_features(dataclasses.replace(plan, tilings={**plan.tilings, "qkv": dataclasses.replace(
        t, ksplit=4)}))  # 224 columns: not whole 64-column blocks
    with pytest.raises(PlanError, match="qkv: .*224 columns"):
        validate_plan(p)


def _expected_ir_weight_bytes(model, batch: int, fmt: str, group: int) -> int:
    """Computed from the shapes alone: 8-bit codes + float32 scales for every linear matrix, bf16
    for the embedding's B rows, the norms and the biases."""
    H, I, V = model.hidden_size, model.intermediate_size, model.vocab_size
    q, kv = model.num_attention_heads * model.head_dim, model.num_key_value_heads * model.head_dim
    mats = [(q, H), (kv, H), (kv, H), (H, q), (I, H), (I, H), (H, I)]

    def mat(n: int, k: int) -> int:
        if fmt == "bf16":
            return 2 * n * k
        return n * k + 4 * n * (math.ceil(k / group) if group else 1)

    per_layer = sum(mat(n, k) for n, k in mats) + 2 * 2 * H
    if model.attention_bias:
        per_layer += 2 * (q + 2 * kv)
    total = model.num_hidden_layers * per_layer + 2 * H  # + the final norm
    if model.tie_word_embeddings and fmt == "bf16":
        total += 2 * V * H + batch * H * 2  # the head reads the table; the lookup its B rows on top
    else:
        total += mat(V, H) + batch * H * 2
    return total


@pytest.mark.parametrize("config", ["llama3-8b", "llama3.2-1b", "qwen2.5-0.5b", "smollm2-135m"])
def test_ir_counts_codes_and_scales(config: str) -> None:
    batch = random.choice([1, 2, 4, 8])
    group = random.choice([32, 64, 192]) if config != "smollm2-135m" else random.choice([32, 64, 192])
    if config == "qwen2.5-0.5b" and 896 % group:
        group = 64
    cases = [("bf16", 0), ("fp8", 0), ("fp8", group), ("int8", 32), ("int8", group)]
    got = {}
    for fmt, g in cases:
        m, d = load_config(ROOT / "configs" / f"{config}.yaml", batch=batch, weights=fmt,
                           weights_group=g if fmt != "bf16" else None)
        graph = build_decode_graph(m, d)
        got[(fmt, g)] = graph.weight_bytes()
        assert got[(fmt, g)] == _expected_ir_weight_bytes(m, batch, fmt, g), (fmt, g)
    ratio = got[("fp8", 0)] / got[("bf16", 0)]
    assert 0.49 < ratio < 0.56, ratio  # the embedding rows and norms stay bf16
    assert got[("int8", 32)] > got[("fp8", 0)]  # a scale per 32 columns: 1/8 more than the codes


@pytest.mark.parametrize("gpu,batch", [("H100", 1), ("L20", 4)])
def test_dag_cost_and_bench_count_the_streamed_bytes(gpu: str, batch: int) -> None:
    m, _ = load_config(ROOT / "configs" / "llama3-8b.yaml")
    bf16 = plan_of("llama3-8b", gpu, batch)
    shapes = linear_shapes(m)
    for fmt in ("fp8", "int8"):
        plan = plan_of("llama3-8b", gpu, batch, weights=fmt)
        totals = Dag(plan).totals()
        cost = CostModel(plan)
        for kind, t in plan.tilings.items():
            n, k = shapes[kind]
            reps = 1 if kind == "lm_head" else m.num_hidden_layers
            # independently: whole chunks of chunk_rows rows per tile, codes then scales, 16-aligned
            cr = 16 if t.batched else 8 // t.warps_per_row
            parts = t.warps_per_row if t.batched else 1
            cols = k // t.ksplit // parts
            scales = cols // t.group if t.group else 1
            chunk = -(-(cr * cols + 4 * cr * scales) // 16) * 16
            rows = [min(t.rows, n - i * t.rows) for i in range(-(-n // t.rows))]
            want = sum(-(-r // cr) * parts * chunk for r in rows) * t.ksplit * reps
            assert totals[kind]["weight_bytes"] == want, kind
            assert n * k <= want / reps <= (n + t.rows) * k * 1.2  # about a byte a weight
            assert cost.kinds[kind]["wt"] == pytest.approx(t.rows // cr * parts * chunk / cost.kinds[kind]["bw"])
        b_plan = plan_step_bytes(plan, 512)
        b_bf16 = plan_step_bytes(bf16, 512)
        assert b_bf16 == step_bytes(m, batch, 512)  # bf16: what adamk-bench always counted
        ratio = b_plan.weights / b_bf16.weights
        assert 0.49 < ratio < 0.58, (fmt, ratio)
        assert b_plan.kv == b_bf16.kv


def test_bench_row_bytes_for_a_tied_model() -> None:
    m, _ = load_config(ROOT / "configs" / "llama3.2-1b.yaml")
    assert m.tie_word_embeddings
    bf16 = plan_of("llama3.2-1b", "H100", 2)
    assert plan_step_bytes(bf16, 1024) == step_bytes(m, 2, 1024)
    fp8 = plan_of("llama3.2-1b", "H100", 2, weights="fp8")
    b = plan_step_bytes(fp8, 1024)
    # the 8-bit LM head streams its own copy; the embedding's 2 rows stay bf16
    head = fp8.tilings["lm_head"]
    assert b.weights > head.tiles * head.task_bytes + 2 * 2 * m.hidden_size


def test_explain_and_smem_show_the_format() -> None:
    plan = plan_of("llama3.2-1b", "L20", 4, weights="int8", weights_group=64)
    text = "\n".join(describe(smem_report(plan)))
    for kind, t in plan.tilings.items():
        line = next(x for x in text.splitlines() if x.strip().startswith(kind))
        assert f"chunk {t.chunk_rows} rows x {t.chunk_cols} of kc {t.kc} int8" in line
        assert f"= {t.chunk_bytes} B/slot" in line
        assert t.chunk_bytes == -(-(t.chunk_rows * t.chunk_cols * (1 + 4 / 64)) // 16) * 16
    out = report(plan)
    assert "weights: int8 (int8 codes, a float32 scale per 64 columns of a row" in out


def test_search_sees_fewer_bytes() -> None:
    """The same search in 8 bits predicts a faster step on a bandwidth-bound model."""
    bf16 = plan_of("llama3-8b", "H100", 1)
    fp8 = plan_of("llama3-8b", "H100", 1, weights="fp8")
    assert fp8.notes["predicted_us"] < 0.8 * bf16.notes["predicted_us"]


def test_linear_tiling_rows_bytes() -> None:
    n, k = random.randint(100, 3000), 64 * random.randint(1, 40)
    t = LinearTiling(n, k, 24, 1, 2, False, True, "fp8", 0)
    assert t.rows_bytes(t.rows) == t.task_bytes
    assert t.rows_bytes(1) == t.chunk_bytes  # a partial chunk streams whole
    b = LinearTiling(n, 8 * random.randint(1, 500), 24, 1, 2)
    assert b.rows_bytes(5) == 5 * b.k * 2
