"""The baseline plan: per-stage tiling from a small cost rule, and a round-robin task order.

The offline search (search.py) never returns a plan predicted slower than this one; the kernel
takes any valid plan (`adamk-gen --strategy round-robin` builds this one).
"""
from __future__ import annotations

from ..config import DeployConfig, ModelConfig
from ..config.deploy import stage_format
from .errors import PlanError
from .kernel_rules import batched_multiply, decide_kernel_features, tiled_weights
from .plan import THREADS, LinearTiling, Plan, Run, column_block, compress_runs, fitting_wpr
from .shapes import linear_shapes, valid_splits

TASK_OVERHEAD_S = 0.6e-6  # dependency wait, activation staging and signal per task (estimate)
MAX_STAGES = 8


def stage_target(deploy: DeployConfig) -> int:
    """Bytes of one stream-ring slot: large enough to amortise a barrier, small enough that
    several fit beside the activation chunk (Ada has 99 KB a block, Hopper 227 KB). 8-bit weights
    take half: chunks of the shape bf16's would have (rows by columns), at a byte a weight."""
    target = 32 * 1024 if deploy.gpu.smem_per_block >= 160 * 1024 else 16 * 1024
    return target // 2 if deploy.weights != "bf16" else target


def choose_tiling(kind: str, n: int, k: int, deploy: DeployConfig, max_kc: int) -> LinearTiling:
    """Smallest K-split whose chunk fits `max_kc`, fewest warps per row whose chunk fits the
    stage target, then the rows per task that minimise the stage's predicted makespan. The
    tiling streams the stage's format (config.deploy.stage_format: deploy.weights, an int4 plan's LM
    head int8; K-chunks of whole column blocks of that format)."""
    gpu = deploy.gpu
    target = stage_target(deploy)
    several = batched_multiply(deploy.batch)
    tiled = tiled_weights(deploy)
    weights, group = stage_format(kind, deploy.weights, deploy.weights_group)
    fmt = {"weights": weights, "group": group}
    splits = valid_splits(kind, k, block=column_block(**fmt))
    if not splits:
        raise PlanError(f"the {kind} stage's K={k} is no whole {column_block(**fmt)}-column blocks of"
                        f" {weights} weights with scale group {group}")
    best = None
    for s in splits:
        kc = k // s
        if kc > max_kc and s != splits[-1]:
            continue
        wpr = fitting_wpr(n, k, s, several, target, **fmt)
        probe = LinearTiling(n, k, 1, s, wpr, several, **fmt)
        if probe.chunk_bytes > target and s != splits[-1]:
            continue
        chunk_rows = probe.chunk_rows
        bw_per_sm = gpu.read_bandwidth / gpu.sms
        for chunks in (1, 2, 3, 4, 6, 8, 12, 16):
            rows = chunk_rows * chunks
            if rows > max(chunk_rows, n):
                break
            t = LinearTiling(n, k, rows, s, wpr, several, tiled, **fmt)
            rounds = -(-t.tasks // gpu.sms)
            cost = rounds * (t.rows_bytes(rows) / bw_per_sm + TASK_OVERHEAD_S)
            if best is None or cost < best[0] - 1e-12:
                best = (cost, t)
        break
    assert best is not None
    return best[1]


def round_robin(plan: Plan) -> list[list[Run]]:
    """Task i of the topological order goes to SM i mod sms: every SM's list stays sorted."""
    per_sm: list[list] = [[] for _ in range(plan.sms)]
    for i, task in enumerate(plan.all_tasks()):
        per_sm[i % plan.sms].append(task)
    return [compress_runs(tasks) for tasks in per_sm]


def round_robin_plan(model: ModelConfig, deploy: DeployConfig) -> Plan:
    """The baseline plan: choose_tiling per stage, attention splits that fill the SMs, the deepest
    ring (up to MAX_STAGES) that fits, the round-robin order, its kernel features decided."""
    gpu, B = deploy.gpu, deploy.batch
    # Activation chunks are staged in shared memory as bf16 [B][kc]; cap them at a quarter of it
    # (the LM head needs the whole hidden vector: it is never K-split, its argmax needs full sums).
    max_kc = max(model.hidden_size, (gpu.smem_per_block // 4) // (2 * B))
    tilings = {
        kind: choose_tiling(kind, n, k, deploy, max_kc) for kind, (n, k) in linear_shapes(model).items()
    }
    attn_splits = max(1, min(32, gpu.sms // (B * model.num_key_value_heads)))
    plan = decide_kernel_features(Plan(model, deploy, gpu.sms, THREADS, tilings, attn_splits, stages=2,
                                       stage_bytes=max(t.stage_bytes for t in tilings.values()), schedule=[],
                                       strategy="round-robin"))
    free = gpu.smem_per_block - plan.smem_bytes + plan.stages * plan.stage_bytes
    stages = min(MAX_STAGES, free // plan.stage_bytes)
    if stages < 2:
        raise PlanError(
            f"{model.name} on {gpu.name} batch {B}: needs {plan.smem_bytes} bytes of shared memory "
            f"with a 2-deep stream ring, the block limit is {gpu.smem_per_block}")
    plan.stages = stages
    plan.schedule = round_robin(plan)
    return decide_kernel_features(plan)


__all__ = ["round_robin_plan", "round_robin", "choose_tiling", "stage_target", "TASK_OVERHEAD_S", "MAX_STAGES"]
