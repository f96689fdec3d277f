"""The paper's K-split claim, checked in the cost model: K-splitting the linear stages at least
halves peak shared memory at no worse predicted step time than the best plan without K-split.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import DeployConfig, ModelConfig
from ..config.gpus import GPUS
from .cost import CostConstants, CostModel, simulate
from .errors import PlanError
from .plan import Plan
from .search import TIME_TOL, Searcher, search_plan


def best_unsplit(model: ModelConfig, deploy: DeployConfig, *, smem_limit: int | None = None, **kw) -> Plan:
    """The best plan without any K-split: under the GPU's own shared-memory limit when some
    unsplit plan fits it; otherwise (the point of K-splitting: e.g. Llama-3-8B on Ada) with the
    limit lifted to the largest of any GPU in the table (Hopper's 227 KB), a hypothetical plan
    that does not fit the target."""
    if smem_limit is not None:
        return search_plan(model, deploy, allow_ksplit=False, smem_limit=smem_limit, **kw)
    try:
        return search_plan(model, deploy, allow_ksplit=False, **kw)
    except PlanError:
        return search_plan(model, deploy, allow_ksplit=False,
                           smem_limit=max(g.smem_per_block for g in GPUS.values()), **kw)


@dataclass
class KsplitClaim:
    """The paper's claim for one deployment: the K-split plan with the least shared memory whose
    predicted time is no worse than the best plan without K-split."""

    unsplit: Plan
    unsplit_s: float
    ksplit: Plan
    ksplit_s: float

    @property
    def unsplit_fits(self) -> bool:
        return self.unsplit.smem_bytes <= self.unsplit.deploy.gpu.smem_per_block

    @property
    def ratio(self) -> float:
        return self.ksplit.smem_bytes / self.unsplit.smem_bytes

    @property
    def holds(self) -> bool:
        return self.ratio <= 0.5 and self.ksplit_s <= self.unsplit_s * (1 + TIME_TOL)

    def describe(self) -> str:
        fit = "fits" if self.unsplit_fits else f"does not fit {self.unsplit.deploy.gpu.smem_per_block} B"
        return (f"best plan without K-split: {self.unsplit.smem_bytes} B ({fit}), predicted"
                f" {self.unsplit_s * 1e6:,.1f} us; least shared memory with K-split at no worse time:"
                f" {self.ksplit.smem_bytes} B, predicted {self.ksplit_s * 1e6:,.1f} us -> peak shared memory"
                f" {100 * (1 - self.ratio):.0f}% lower ({'claim holds' if self.holds else 'claim does NOT hold'})")


def ksplit_claim(model: ModelConfig, deploy: DeployConfig, *, constants: CostConstants | None = None,
                 context: int | None = None) -> KsplitClaim:
    """Search the best unsplit plan, then the K-split plan with the least shared memory that is
    predicted no slower (both on the full schedule)."""
    unsplit = best_unsplit(model, deploy, constants=constants, context=context)
    t_u = simulate(unsplit, CostModel(unsplit, constants, context)).predicted_s
    s = Searcher(model, deploy, constants=constants, context=context)
    budget = s.screen(unsplit.tilings, unsplit.attn_splits, unsplit.stages).time
    best = None
    for _ in range(3):
        s.budget = budget
        plan, _ = s.run()
        t_k = simulate(plan, CostModel(plan, constants, context)).predicted_s
        if best is None or (t_k <= t_u * (1 + TIME_TOL), -plan.smem_bytes) > (best[1] <= t_u * (1 + TIME_TOL),
                                                                              -best[0].smem_bytes):
            best = (plan, t_k)
        if t_k <= t_u * (1 + TIME_TOL):
            break
        budget *= t_u / t_k  # the screening model was optimistic for this plan: tighten
    return KsplitClaim(unsplit, t_u, best[0], best[1])


__all__ = ["best_unsplit", "KsplitClaim", "ksplit_claim"]
