"""A read-on-access mapping of weight name -> QuantizedMatrix (or Int4Matrix), how checkpoints hand
out the 8-bit and 4-bit weights they store (an 8B model's quantized weights are read one matrix at a
time, never all at once)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any



class QuantizedTensors(Mapping):
    """name -> QuantizedMatrix or Int4Matrix, each built by `read(name)` when asked for."""

    def __init__(self, names: Iterable[str], read: Callable[[str], Any]) -> None:
        self.names = list(names)
        self._set = set(self.names)
        self._read = read

    def __getitem__(self, name: str) -> Any:
        if name not in self._set:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
