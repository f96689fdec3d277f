"""The rules that decide the kernel's features, one function per feature.

A kernel feature is a switch of the generated kernel's code paths that the plan records as a field
(plan.KERNEL_FEATURES: Plan.batched, bulk_ring, kv_ring, kv_ring_positions, kv_ring_slots,
kv_pieces, attn_polled; and LinearTiling.tiled, which the search sets when it builds a tiling).
The planners (search.Searcher, baseline) call `decide_kernel_features` whenever they build a plan
or change its tilings, ring or schedule, so plan.json and the plan hash say what the kernel does.
validate.py refuses a plan whose recorded values the kernel cannot run.
"""
from __future__ import annotations

import dataclasses

from ..config import DeployConfig, ModelConfig
from ..config.gpus import GpuSpec
from .plan import WARPS, Plan

# From this batch on, the kernel multiplies a weight chunk by all sequences at once.
BATCHED_FROM = 2

# Positions of one K/V piece that batched attention copies to shared memory (Plan.kv_pieces),
# largest first: the first that gives two buffers is taken.
KV_PIECE_POSITIONS = (64, 32, 16)
KV_PIECE_BUFFERS = 4  # at most: all of them are in flight before the first is used


def batched_multiply(batch: int) -> bool:
    """Plan.batched: whether every warp multiplies all rows of a weight chunk by all sequences, 16
    rows x 8 sequences per tensor-core MMA (adamk/linear_multiply.cuh, multiply_batched), instead of one row
    per warp group (multiply_rows). With one sequence an MMA would leave 7 of its 8 columns idle."""
    return batch >= BATCHED_FROM


def bulk_ring(gpu: GpuSpec) -> bool:
    """Plan.bulk_ring: whether bulk copies fill the stream ring (adamk/ring.cuh): one copy a
    chunk, completed on the slot's mbarrier, with no thread of the loader busy for it. Only
    Hopper's bulk-copy unit (TMA, GpuSpec.tma) does this; elsewhere cp.async fills the ring."""
    return gpu.tma


def tiled_weights(deploy: DeployConfig) -> bool:
    """LinearTiling.tiled: whether the linear stages' weights are packed chunk by chunk, each laid
    out as its ring slot. One bulk copy fills a slot only from contiguous bytes, and a chunk of the
    batched multiply (16 rows by a block of columns) is not contiguous in a row-major matrix; so
    where bulk copies fill the batched multiply's ring (the kernel's TILED_WEIGHTS, adamk/tasks.cuh).
    8-bit weights (deploy.weights fp8 or int8) are always tiled, at any batch and on any GPU: a
    chunk carries its codes and then its scales, which only a packed chunk keeps together
    (docs/quantized-weights.md, "The packed chunk")."""
    return (batched_multiply(deploy.batch) and bulk_ring(deploy.gpu)) or deploy.weights != "bf16"


def kv_ring_fit(model: ModelConfig, stage_bytes: int) -> int:
    """Positions of cached K/V rows one ring slot holds: its K rows, then its V rows, in whole
    blocks of 16 positions (a warp's MMA block), at most a block per warp."""
    fit = stage_bytes // (4 * model.head_dim) // 16 * 16
    return min(fit, 16 * WARPS)


def kv_ring(model: ModelConfig, batch: int, ring_bulk: bool, positions: int) -> bool:
    """Plan.kv_ring: whether attention's cached K/V rows come through the stream ring: the ring
    streams an attention task's rows as it streams a linear task's weight chunks, tasks ahead,
    instead of the task loading them on the QKV-attention-O chain, and the tensor cores multiply
    them in the slot (adamk/attention_mma.cuh, MmaAttention). It needs bulk copies (bulk_ring), heads
    of 64 or 128 dimensions with groups of up to 8 query heads (what MmaAttention takes) and a slot
    of at least one 16-position block (`positions`, kv_ring_fit). With several sequences and
    128-dimension heads a slot holds only 64 positions, and attention's own bulk-copied pieces
    (kv_pieces) are faster there. See docs/experiments.md, "K/V rows through the stream ring
    (Plan.kv_ring)"."""
    if not ring_bulk or model.head_dim % 64 or model.group_size > 8:
        return False
    return (batch == 1 or model.head_dim == 64) and positions >= 16


def kv_ring_slots(deploy: DeployConfig, attn_splits: int, positions: int) -> int:
    """Plan.kv_ring_slots: ring slots an attention task takes where its K/V rows come through the
    ring, `positions` a slot: enough for the longest split the cache allows (slots past the
    split's last position arrive empty)."""
    per = -(-deploy.max_context // attn_splits)
    return -(-per // positions)


def kv_pieces(model: ModelConfig, gpu: GpuSpec, batched: bool, through_ring: bool,
              region_bytes: int) -> tuple[int, int]:
    """Plan.kv_pieces: (positions a piece, buffers) of batched attention on Hopper, where the K/V
    rows do not come through the ring: an attention task copies its split's K and V rows into
    shared memory by bulk copies issued before it waits for its inputs, a piece (K rows, then V
    rows) per buffer, into `region_bytes` (the staged activations' and the reductions' regions,
    Plan.kv_region_bytes, which attention does not use); all buffers are in flight before the
    first piece is used (adamk/attention_kv.cuh). The largest piece that gives two buffers is taken.
    (0, 0): the rows come through the ring (kv_ring), or the lanes load them into registers (one
    sequence, whose loads the tensor cores multiply in registers, or no bulk-copy unit)."""
    if not (gpu.tma and batched) or through_ring:
        return 0, 0
    for positions in KV_PIECE_POSITIONS:
        buffers = region_bytes // (2 * positions * model.head_dim * 2)
        if buffers >= 2:
            return positions, min(buffers, KV_PIECE_BUFFERS)
    return 0, 0


def schedule_allows_polling(plan: Plan) -> bool:
    """Whether the schedule lets the last split of each attention group poll the others' partials
    (attn_polled) without a deadlock. A combiner holds its SM until its group's other splits are
    done, so none of those, nor any task they wait for, may run behind it: true when every SM's
    list follows the stage order (only attention tasks of its layer and later stages can follow a
    combiner) and no combiner of a layer precedes one of that layer's other attention tasks on its
    SM. The search's and the round-robin schedules qualify."""
    if not plan.in_stage_order:
        return False
    last = plan.attn_splits - 1
    for runs in plan.schedule:
        combined: set[int] = set()  # layers whose combiner this SM has run
        for run in runs:
            if run.kind != "attn":
                continue
            for t in run.tasks():
                if t.index % plan.attn_splits == last:
                    combined.add(t.layer)
                elif t.layer in combined:
                    return False
    return True


def attn_polled(plan: Plan, batched: bool) -> bool:
    """Plan.attn_polled: whether the last split of each attention group (split attn_splits - 1)
    combines the group's partials by polling them: each split stores its partial as 8-byte words
    {value, step} and nothing counts the splits (adamk/attention_combine.cuh, combine_splits_polled). Otherwise
    the last split to finish, elected by an atomic count, combines them. Polling needs a schedule
    that allows it (schedule_allows_polling); with one sequence the combiner, the split with the
    fewest positions, would poll while the others stream their K/V, and the election is faster.
    See docs/experiments.md, "Polled combine of attention splits (Plan.attn_polled)"."""
    return batched and schedule_allows_polling(plan)


def decide_kernel_features(plan: Plan) -> Plan:
    """A copy of `plan` with every kernel feature decided by the rules above from its model,
    deployment, tilings, ring, attention splits and schedule. Call it again after changing any of
    those (a schedule-less plan gets the features of its sizes; attn_polled follows the schedule)."""
    model, deploy = plan.model, plan.deploy
    batched = batched_multiply(deploy.batch)
    ring_bulk = bulk_ring(deploy.gpu)
    fit = kv_ring_fit(model, plan.stage_bytes)
    through_ring = kv_ring(model, deploy.batch, ring_bulk, fit)
    positions = fit if through_ring else 0
    slots = kv_ring_slots(deploy, plan.attn_splits, positions) if through_ring else 0
    pieces = kv_pieces(model, deploy.gpu, batched, through_ring, plan.kv_region_bytes)
    return dataclasses.replace(
        plan, batched=batched, bulk_ring=ring_bulk, kv_ring=through_ring, kv_ring_positions=positions,
        kv_ring_slots=slots, kv_pieces=pieces, attn_polled=attn_polled(plan, batched))


__all__ = ["BATCHED_FROM", "KV_PIECE_POSITIONS", "KV_PIECE_BUFFERS", "batched_multiply", "bulk_ring",
           "tiled_weights", "kv_ring_fit", "kv_ring", "kv_ring_slots", "kv_pieces", "schedule_allows_polling",
           "attn_polled", "decide_kernel_features"]
