"""The shared-memory constraint model: what one persistent block must hold at once.

A linear task of stage kind `k` is cut in three dimensions:

  * output rows per ring chunk  r = chunk_rows = WARPS // warps_per_row  (and rows per task;
                                batched: 16, and a chunk spans kc // warps_per_row columns),
  * the K-chunk                 kc = k // ksplit (K-splitting divides the reduction),
  * the pipeline depth          d = stages (ring slots; d - 1 chunks are in flight).

The block holds, at once:

  ring   d * stage_bytes, stage_bytes = max over kinds of r * chunk columns * 2 (bf16; 8-bit
         weights: r * chunk columns + 4 * r * scales a row, 16-aligned: LinearTiling.chunk_bytes) (the weight
         pipeline: the current task's chunks and the prefetch of the next tasks' weights share it),
  x      B * max x_row * 2    (the staged bf16 activation chunk; x_row = kc, plus 32 elements of
         padding per sequence with the batched multiply: LinearTiling.x_row),
  red    per-warp partial dot products: max rows * warps_per_row * B * 4, or with the batched
         multiply (B >= 2) max (rows + 2 * WARPS * chunk_rows) * B * 4 (LinearTiling.red_floats),
  attn   the attention scratch (independent of the linear tiling, see Plan.attn_bytes),
  misc   RMSNorm statistics,
  barrier  mbarriers (8 bytes each): one that the Hopper bulk copies of x complete on, one
         per ring slot where bulk copies fill the ring (Plan.bulk_ring), and one per K/V buffer of
         batched attention on Hopper (Plan.kv_pieces), whose buffers borrow the x and red regions.

The byte counts are those of `Plan.smem_layout` (the layout the kernel is compiled with): this
module only explains them per stage and evaluates counterfactuals (the same plan unsplit).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .kernel_rules import decide_kernel_features
from .plan import LINEAR_KINDS, WARPS, LinearTiling, Plan, align16


@dataclass(frozen=True)
class StageSmem:
    """The shared memory one linear task of a stage kind needs, by region (bytes)."""

    kind: str
    chunk_rows: int
    kc: int
    stages: int
    chunk_bytes: int  # one ring slot as this stage fills it (LinearTiling.chunk_bytes: 8-bit scales included)
    ring: int  # stages * chunk_bytes: this stage's own pipeline
    x: int  # B * x_row * 2
    red: int  # LinearTiling.red_floats(B) * 4
    chunk_cols: int = 0  # columns of one chunk (LinearTiling.chunk_cols)
    weights: str = "bf16"  # the stage's weights format (LinearTiling.weights)

    @property
    def total(self) -> int:
        return align16(self.ring) + align16(self.x) + align16(self.red)


def stage_smem(t: LinearTiling, kind: str, stages: int, batch: int) -> StageSmem:
    chunk = t.stage_bytes
    return StageSmem(kind, t.chunk_rows, t.kc, stages, chunk, stages * chunk, batch * t.x_row * 2,
                     t.red_floats(batch) * 4, t.chunk_cols, t.weights)


@dataclass(frozen=True)
class SmemReport:
    limit: int  # the GPU's per-block maximum
    regions: dict  # SMEM_RING, SMEM_X, ... sizes (bytes, 16-aligned)
    total: int
    per_stage: dict  # kind -> StageSmem
    stage_bytes: int
    stages: int

    @property
    def fits(self) -> bool:
        return self.total <= self.limit


def smem_report(plan: Plan) -> SmemReport:
    lay = plan.smem_layout()
    names = ["SMEM_RING", "SMEM_X", "SMEM_RED", "SMEM_ATTN", "SMEM_MISC", "SMEM_BARRIER", "SMEM_TOTAL"]
    sizes = {n: lay[names[i + 1]] - lay[n] for i, n in enumerate(names[:-1])}
    return SmemReport(
        limit=plan.deploy.gpu.smem_per_block,
        regions=sizes,
        total=lay["SMEM_TOTAL"],
        per_stage={k: stage_smem(t, k, plan.stages, plan.batch) for k, t in plan.tilings.items()},
        stage_bytes=plan.stage_bytes,
        stages=plan.stages,
    )


def required_stage_bytes(tilings: dict[str, LinearTiling]) -> int:
    return max(t.stage_bytes for t in tilings.values())


def with_tilings(plan: Plan, tilings: dict[str, LinearTiling], stages: int | None = None,
                 attn_splits: int | None = None) -> Plan:
    """A schedule-less copy of `plan` with other tilings (stage_bytes recomputed, kernel features
    decided anew)."""
    return decide_kernel_features(dataclasses.replace(
        plan, tilings=dict(tilings), stage_bytes=required_stage_bytes(tilings),
        stages=plan.stages if stages is None else stages,
        attn_splits=plan.attn_splits if attn_splits is None else attn_splits,
        schedule=[], notes={}))


def smem_bytes_for(plan: Plan, tilings: dict[str, LinearTiling], stages: int,
                   attn_splits: int | None = None) -> int:
    return with_tilings(plan, tilings, stages, attn_splits).smem_bytes


def unsplit_tilings(tilings: dict[str, LinearTiling]) -> dict[str, LinearTiling]:
    """The same tiling with every K-split undone (rows and warps per row kept)."""
    return {k: dataclasses.replace(t, ksplit=1) for k, t in tilings.items()}


def peak_smem(plan: Plan, ksplit: bool = True) -> int:
    """Peak shared memory of the plan's block; with ksplit=False, of the same plan with every
    K-split undone (same rows, warps per row and ring depth): the direct counterfactual. The
    search's "best plan without K-split" (ksplit_claim.best_unsplit) is the fairer comparison."""
    if ksplit:
        return plan.smem_bytes
    return smem_bytes_for(plan, unsplit_tilings(plan.tilings), plan.stages)


def describe(rep: SmemReport) -> list[str]:
    lines = [f"shared memory: {rep.total} B of {rep.limit} B per block"
             f" ({'fits' if rep.fits else 'DOES NOT FIT'}); ring {rep.stages} x {rep.stage_bytes} B"]
    lines.append("  regions: " + ", ".join(f"{k.removeprefix('SMEM_').lower()} {v}" for k, v in rep.regions.items()))
    for k in LINEAR_KINDS:
        s = rep.per_stage.get(k)
        if s is not None:
            fmt = "" if s.weights == "bf16" else f" {s.weights} (scales included)"
            lines.append(f"  {k:8s} chunk {s.chunk_rows} rows x {s.chunk_cols} of kc {s.kc}{fmt}"
                         f" = {s.chunk_bytes} B/slot,"
                         f" own ring {s.ring} B, x {s.x} B, red {s.red} B")
    return lines


__all__ = ["StageSmem", "SmemReport", "stage_smem", "smem_report", "required_stage_bytes", "with_tilings",
           "smem_bytes_for", "unsplit_tilings", "peak_smem", "describe", "WARPS"]
