"""A read-on-access mapping of weight name -> QuantizedMatrix, how checkpoints hand out the 8-bit
weights they store (an 8B model's 8-bit weights are read one matrix at a time, never all at once)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from .matrix import QuantizedMatrix


class QuantizedTensors(Mapping):
    """name -> QuantizedMatrix, each built by `read(name)` when asked for."""

    def __init__(self, names: Iterable[str], read: Callable[[str], QuantizedMatrix]) -> None:
        self.names = list(names)
        self._set = set(self.names)
        self._read = read

    def __getitem__(self, name: str) -> QuantizedMatrix:
        if name not in self._set:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
