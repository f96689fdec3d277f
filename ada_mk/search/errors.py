"""The search package's errors: a plan that cannot be made, or is not valid for its target; cost
constants that cannot be fitted or read."""
from __future__ import annotations


class PlanError(ValueError):
    """A plan that cannot be made or is not valid for its target; the message says why."""


class CalibrationError(ValueError):
    """Profiles that cannot be fitted, or a calibration file that cannot be read; the message names
    the file."""


__all__ = ["PlanError", "CalibrationError"]
