"""Reading a configuration file: JSON (`.json`) or strict YAML (a key given twice is an error);
every failure is one ConfigError naming the file (and the line, where the parser gives one)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Configs are a few KB; anything much larger is the wrong file (say, a weights file).
MAX_FILE_BYTES = 4 * 1024 * 1024


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key!r}", key_node.start_mark,
                        )
                    seen.add(key)
                except TypeError:  # unhashable: the base class reports it with its mark
                    break
        return super().construct_mapping(node, deep=deep)


def read_file(path: Path, file: str) -> Any:
    """Parse the file as JSON (`.json`) or YAML; any failure is a ConfigError."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{size} bytes is too large for a config file", file=file)
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", file=file) from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise ConfigError(f"cannot read config: {e}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", file=file) from None

    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON: {e.msg}", file=f"{file}:{e.lineno}:{e.colno}") from None
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"invalid JSON: {type(e).__name__}: {e}", file=file) from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        problem = e.problem or e.context or "syntax error"
        raise ConfigError(f"invalid YAML: {problem}", file=where) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # PyYAML lets some constructor failures through unwrapped, e.g. `!!timestamp 2024-13-45`
        # or a 5000-digit integer (ValueError), or very deep nesting (RecursionError).
        raise ConfigError(f"invalid YAML value: {type(e).__name__}: {e}", file=file) from None
