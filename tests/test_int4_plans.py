"""Plans in 4-bit weights (deploy.weights int4): every shipped config plans at batch 1 and 4 on
H100, H200 and L20 (SmolLM2-135M, whose K of 576 is no whole groups of 128, at group 32 and 64);
the format's groups, names and one-line errors; the chunk bytes (half a byte a code, a 4-byte
bf16 scale/offset pair per group of a row; the LM head int8) as the IR, the DAG and the search
count them."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from ada_mk.cli.gen import output_dir_name
from ada_mk.config import ConfigError, DeployConfig, load_config, weights_suffix
from ada_mk.config.gpus import lookup_gpu
from ada_mk.ir import build_decode_graph
from ada_mk.search.baseline import round_robin_plan
from ada_mk.search.dag import Dag
from ada_mk.search.errors import PlanError
from ada_mk.search.explain import report
from ada_mk.search.plan import LinearTiling
from ada_mk.search.search import search_plan
from ada_mk.search.shapes import linear_shapes
from ada_mk.search.validate import validate_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def plan_of(config: str, gpu: str, batch: int, **kw):
    m, d = load_config(ROOT / "configs" / f"{config}.yaml", gpu=gpu, batch=batch, weights="int4", **kw)
    return search_plan(m, d)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("gpu,batch", [("H100", 1), ("H100", 4), ("H200", 1), ("H200", 4), ("L20", 1), ("L20", 4)])
def test_every_shipped_config_plans_in_int4(cfg: Path, gpu: str, batch: int) -> None:
    group = random.choice([32, 64]) if cfg.stem == "smollm2-135m" else None
    m, d = load_config(cfg, gpu=gpu, batch=batch, weights="int4", weights_group=group)
    assert d.weights_group == (group or 128)
    for plan in (search_plan(m, d), round_robin_plan(m, d)):
        validate_plan(plan)
        assert plan.smem_bytes <= d.gpu.smem_per_block
        for kind, t in plan.tilings.items():
            want = ("int8", 32) if kind == "lm_head" else ("int4", d.weights_group)  # stage_format
            assert (t.weights, t.group) == want, kind
            assert t.tiled and t.whole_column_blocks, (kind, t)
            assert t.chunk_cols % 64 == 0 and t.chunk_cols % t.group == 0, (kind, t)
        suffix = "_int4" if group is None else f"_int4g{group}"
        assert plan.file_stem.endswith(f"_bs{batch}{suffix}")
        assert (plan.to_json()["weights"], plan.to_json()["weights_group"]) == ("int4", d.weights_group)


def test_smollm2_at_group_128_is_refused_in_one_line() -> None:
    m, d = load_config(ROOT / "configs" / "smollm2-135m.yaml", weights="int4")
    with pytest.raises(PlanError, match="K=576 is no whole 128-column blocks of int4") as e:
        search_plan(m, d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("group", [0, 96, 256, 16])
def test_int4_groups(group: int) -> None:
    with pytest.raises(ConfigError, match="--weights-group = .*int4 weights take a scale group of 32, 64, 128"):
        load_config(ROOT / "configs" / "llama3-8b.yaml", weights="int4", weights_group=group)
    with pytest.raises(ConfigError, match="deploy.weights_group"):
        DeployConfig(gpu=lookup_gpu("H100"), weights="int4", weights_group=group)


def test_names_and_defaults() -> None:
    assert weights_suffix("int4", 128) == "_int4"
    assert weights_suffix("int4", 32) == "_int4g32"
    gpu = lookup_gpu("H100")
    assert output_dir_name(DeployConfig(gpu=gpu, batch=4, weights="int4", weights_group=128)) == "H100-bs4-int4"
    assert output_dir_name(DeployConfig(gpu=gpu, batch=1, weights="int4", weights_group=64)) == "H100-bs1-int4g64"
    _, d = load_config(ROOT / "configs" / "llama3-8b.yaml", weights="int4")
    assert (d.weights, d.weights_group) == ("int4", 128)


def test_chunk_bytes() -> None:
    """Codes are half a byte; each group of a chunk row adds a 4-byte (scale, offset) pair."""
    group = random.choice([32, 64, 128])
    k = 256 * random.randint(1, 20)  # whole groups in each of two column blocks
    for batched, wpr in ((False, 1), (False, 4), (True, 1), (True, 2)):
        t = LinearTiling(random.randint(50, 3000), k, 16, 1, wpr, batched, True, "int4", group)
        rows = 16 if batched else 8 // wpr
        cols = k // (wpr if batched else 1)
        assert t.code_bytes == rows * cols // 2
        assert t.chunk_bytes == -(-(rows * cols // 2 + 4 * rows * cols // group) // 16) * 16
        assert t.column_block == 64 if group < 128 else t.column_block == 128
        assert t.rows_bytes(1) == t.chunk_bytes * (wpr if batched else 1)  # a partial row group streams whole


def test_ir_dag_and_search_count_the_int4_bytes() -> None:
    m, _ = load_config(ROOT / "configs" / "llama3-8b.yaml")
    bf16 = search_plan(*load_config(ROOT / "configs" / "llama3-8b.yaml"))
    plan = plan_of("llama3-8b", "H100", 1)
    shapes = linear_shapes(m)
    totals = Dag(plan).totals()
    for kind, t in plan.tilings.items():
        n, k = shapes[kind]
        reps = 1 if kind == "lm_head" else m.num_hidden_layers
        # about half a byte a weight plus 4 bytes per 128 weights; the LM head int8, 4 bytes per 32
        per = 1 + 4 / 32 if kind == "lm_head" else 0.5 + 4 / 128
        assert n * k * per <= totals[kind]["weight_bytes"] / reps <= (n + t.rows) * k * per * 1.02
    graph = build_decode_graph(*load_config(ROOT / "configs" / "llama3-8b.yaml", weights="int4"))
    linear = sum(n * k for kind, (n, k) in shapes.items() if kind != "lm_head") * m.num_hidden_layers
    n_h, k_h = shapes["lm_head"]
    codes_and_pairs = linear // 2 + 4 * linear // 128 + n_h * k_h + 4 * n_h * k_h // 32  # the head int8
    # plus the bf16 norms and the step's one embedding row
    assert codes_and_pairs < graph.weight_bytes() < codes_and_pairs + 1e6
    assert plan.notes["predicted_us"] < 0.5 * bf16.notes["predicted_us"]
    assert "weights: int4 (4-bit codes, a bf16 scale and offset per 128 columns" in report(plan)


def test_the_head_streams_int8_and_validate_checks_it() -> None:
    import dataclasses

    plan = plan_of("llama3.2-1b", "H100", 4)
    head = plan.tilings["lm_head"]
    assert (head.weights, head.group) == ("int8", 32) and head.tiled
    assert all(t.weights == "int4" for k, t in plan.tilings.items() if k != "lm_head")
    bad = dataclasses.replace(plan, tilings={**plan.tilings, "lm_head": dataclasses.replace(head, weights="int4",
                                                                                            group=128)})
    with pytest.raises(PlanError, match="lm_head: tiling streams int4 weights with scale group 128; the deployment's"
                                        " are int8 with group 32"):
        validate_plan(bad)
