"""The one exception type for bad configuration input.

Every problem with a user's input (a config file, a command-line flag) surfaces as a
`ConfigError`, whose message is a single line that names where the problem is (file and
field), the offending value and what was expected, e.g.

    configs/x.yaml: model.num_key_value_heads = 5: must divide num_attention_heads (32)

One line, because the CLI prints it after "adamk-gen: error: " and a user should be able to
fix the file from that line alone.
"""
from __future__ import annotations

import reprlib
from typing import Any

_NO_VALUE: Any = object()

# Bounded repr: config values come from arbitrary YAML, which may be huge, deeply nested or
# even self-referential (YAML anchors); the message must stay short and building it cheap.
_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 4
_repr.maxlong = 24


def short_repr(value: Any) -> str:
    """A one-line, length-bounded repr of a config value."""
    try:
        text = _repr.repr(value)
    except Exception:  # a pathological object must not hide the real error
        text = f"<{type(value).__name__}>"
    return _one_line(text)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(ValueError):
    """Bad configuration input; `str()` is one line: `file: field = value: expected`.

    `file`, `field` and `value` are optional (a command-line flag has no file; a missing key has
    no value), `expected` says what would have been accepted.
    """

    def __init__(
        self,
        expected: str,
        *,
        file: str | None = None,
        field: str | None = None,
        value: Any = _NO_VALUE,
    ) -> None:
        self.expected = expected
        self.file = None if file is None else str(file)
        self.field = field
        self.value = None if value is _NO_VALUE else value
        self.has_value = value is not _NO_VALUE
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.field:
            where.append(f"{self.field} = {short_repr(self.value)}" if self.has_value else self.field)
        elif self.has_value:
            where.append(short_repr(self.value))
        return _one_line(": ".join(where + [self.expected]))

    def __reduce__(self):  # keep picklable despite the keyword-only constructor
        return (_rebuild, (self.expected, self.file, self.field, self.value, self.has_value))


def _rebuild(expected: str, file: str | None, field: str | None, value: Any, has_value: bool) -> ConfigError:
    return ConfigError(expected, file=file, field=field, value=value if has_value else _NO_VALUE)
