"""The entry point: the validated plan for one (model, deployment)."""
from __future__ import annotations

from ..config import DeployConfig, ModelConfig
from ..config.model import EXTRA_DEFAULTS
from ..config.model_checks import REFERENCE_ONLY_MODEL_TYPES
from .baseline import round_robin_plan
from .cost import CostConstants
from .errors import PlanError
from .plan import Plan
from .search import search_plan
from .validate import validate_plan

STRATEGIES = ("search", "round-robin")


def check_supported(model: ModelConfig) -> None:
    """Refuse, before any search, a model the kernel's code cannot run."""
    # Fields beyond the Llama shape the kernel does not implement (q/k norms it does).
    unsupported = [k for k, default in EXTRA_DEFAULTS.items() if k != "qk_norm" and getattr(model, k) != default]
    if model.model_type in REFERENCE_ONLY_MODEL_TYPES or unsupported:
        raise PlanError(f"model_type {model.model_type}: the kernel does not support it yet "
                        f"({', '.join(unsupported) or 'its layers'}); only the reference executor "
                        "(ada_mk.ir.ReferenceExecutor) runs it")
    if model.head_dim not in (64, 128):  # the head sizes adamk/attention.cuh is written for
        raise PlanError(f"head_dim {model.head_dim}: the attention code takes 64 or 128")


def make_plan(model: ModelConfig, deploy: DeployConfig, strategy: str = "search",
              constants: CostConstants | None = None) -> Plan:
    """The plan adamk-gen compiles: the offline search's (search.search_plan; with `constants`
    other than the GPU's own, cost.constants_for), or with strategy="round-robin" the baseline
    (baseline.round_robin_plan); validated either way."""
    check_supported(model)
    if strategy == "search":
        plan = search_plan(model, deploy, constants=constants)
    elif strategy == "round-robin":
        plan = round_robin_plan(model, deploy)
    else:
        raise PlanError(f"unknown strategy {strategy!r} (round-robin or search)")
    validate_plan(plan)
    return plan


__all__ = ["make_plan", "check_supported", "STRATEGIES"]
