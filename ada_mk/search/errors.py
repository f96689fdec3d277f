"""The search package's error: a plan that cannot be made, or is not valid for its target."""
from __future__ import annotations


class PlanError(ValueError):
    """A plan that cannot be made or is not valid for its target; the message says why."""


__all__ = ["PlanError"]
