"""Typed reads from one mapping of a configuration, with errors that name the file and the dotted
field (`configs/x.yaml: model.hidden_size = '4096': must be a positive integer`)."""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import _NO_VALUE, ConfigError

# Sizes index device memory with 32-bit arithmetic in the generated kernel.
MAX_SIZE = 2**31 - 1

REQUIRED: Any = object()


class Fields:
    """Typed reads from one mapping of the input; errors name the file and the dotted field.

    `null_is_missing`: HF configs write `null` for "use the default" (head_dim,
    num_key_value_heads, ...); in our strict YAML a null is a wrong type.
    """

    def __init__(self, data: Mapping, file: str, prefix: str = "", *, null_is_missing: bool = False):
        self.data = data
        self.file = file
        self.prefix = prefix
        self.null_is_missing = null_is_missing

    def field(self, key: Any) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: Any, expected: str, value: Any = _NO_VALUE) -> ConfigError:
        return ConfigError(expected, file=self.file, field=self.field(key), value=value)

    def has(self, key: str) -> bool:
        return key in self.data and not (self.null_is_missing and self.data[key] is None)

    def _missing(self, key: str, default: Any, what: str) -> Any:
        if default is REQUIRED:
            raise self.error(key, f"missing; expected {what}")
        return default

    def int(self, key: str, default: Any = REQUIRED) -> int:
        """A positive integer that fits the kernel's 32-bit indexing (bool is not an int)."""
        what = "a positive integer"
        if not self.has(key):
            return self._missing(key, default, what)
        v = self.data[key]
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(key, f"must be {what}", v)
        if not 0 < v <= MAX_SIZE:
            raise self.error(key, f"must be {what} <= {MAX_SIZE}", v)
        return v

    def float(self, key: str, default: Any = REQUIRED) -> float:
        """A finite number > 0 (an integer is fine: `rope_theta: 500000`)."""
        what = "a finite number > 0"
        if not self.has(key):
            return self._missing(key, default, what)
        v = self.data[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            if isinstance(v, str) and re.fullmatch(r"[0-9.]+[eE][0-9]+|[0-9]+[eE]-?[0-9]+", v.strip()):
                # PyYAML (YAML 1.1) reads 1e-5 as a string; 1.0e-5 is a float.
                raise self.error(key, f"must be {what} (YAML reads this as a string; write it as 1.0e-5)", v)
            raise self.error(key, f"must be {what}", v)
        try:
            x = float(v)
        except OverflowError:
            raise self.error(key, f"must be {what}", v) from None
        if not (math.isfinite(x) and x > 0):
            raise self.error(key, f"must be {what}", v)
        return x

    def bool(self, key: str, default: Any = REQUIRED) -> bool:
        if not self.has(key):
            return self._missing(key, default, "true or false")
        v = self.data[key]
        if not isinstance(v, bool):
            raise self.error(key, "must be true or false", v)
        return v

    def str(self, key: str, default: Any = REQUIRED) -> str:
        if not self.has(key):
            return self._missing(key, default, "a string")
        v = self.data[key]
        if not isinstance(v, str) or not v:
            raise self.error(key, "must be a non-empty string", v)
        return v

    def mapping(self, key: str) -> Mapping | None:
        """The nested mapping at `key`, or None when absent/null."""
        v = self.data.get(key)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise self.error(key, "must be a mapping", v)
        return v

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in self.data:
            if key in allowed:
                continue
            hint = ""
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    hint = f"; did you mean {close[0]!r}?"
            raise self.error(key, f"unknown key{hint or '; expected one of ' + ', '.join(allowed)}")

    def require(self, keys: Iterable[str], what: str = "") -> None:
        for key in keys:
            if key not in self.data:
                raise self.error(key, f"missing{'; ' + what if what else ''}")
