"""Pack a checkpoint's weights into one kernel's device layout, as a raw file that `adamk_create()`
takes as it is (see examples/c/); what `adamk-pack` does. bf16 segments hold bf16 bytes; a plan's
quantized stages hold their chunks of codes and scales (docs/quantized-weights.md), quantized here
once (a bf16 checkpoint) or taken as the checkpoint stores them (FP8 safetensors, GGUF Q8_0, GGUF
Q4_0 / Q4_1 / Q4_K), so that a later load (`read_packed`) copies the file as it is.

The layout comes from the kernel itself (its adamk_plan_json(), or its plan.json:
`weights_layout_from_json`) or from a plan made here (`ada_mk.search.layout.make_layout`).
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator
from typing import Any, Mapping

import numpy as np

from ..search.layout import Region, Segment, quantized_from_json

class _WeightsLayout:
    """Just enough of a Layout for pack_weights: the weights region."""

    def __init__(self, weights: Region) -> None:
        self.weights = weights


def weights_layout_from_json(doc: Mapping[str, Any]) -> _WeightsLayout:
    """The weights region of a plan.json / adamk_plan_json() document ({"plan", "layout"})."""
    r = doc["layout"]["weights"]

    def segs(d: Mapping[str, Any]) -> dict[str, Segment]:
        # v[4], the interleave flag, and v[5], the tiling, are absent from layouts written before they
        # existed; v[6], an 8-bit segment's chunking, is present only on 8-bit segments
        return {k: Segment(k, int(v[0]), int(v[1]), tuple(v[2]), tuple(v[3]), len(v) > 4 and bool(v[4]),
                           tuple(int(x) for x in v[5]) if len(v) > 5 else (),
                           quantized_from_json(v[6], f"weights segment {k!r}") if len(v) > 6 else None)
                for k, v in d.items()}

    region = Region(int(r["unit_bytes"]), segs(r["globals"]), segs(r["per_layer"]), int(r["layer_base"]),
                    int(r["layer_stride"]), int(r["layers"]))
    if region.total_bytes != int(r["total_bytes"]):
        raise ValueError(f"layout: weights total_bytes {r['total_bytes']} disagrees with its segments "
                         f"({region.total_bytes})")
    return _WeightsLayout(region)


def quantized_source_names(layout: Any) -> dict[str, str]:
    """The HF names of the tensors the layout's quantized segments are packed from, with the format
    each streams in."""
    w = layout.weights
    out = {s: seg.weights for seg in w.globals_.values() if seg.linear is not None for s in seg.sources}
    for seg in w.per_layer.values():
        if seg.linear is not None:
            out.update((s.format(i=i), seg.weights) for s in seg.sources for i in range(w.layers))
    return out


class PackingSources(Mapping):
    """A checkpoint's tensors as packing takes them: the 8-bit matrix the checkpoint stores
    (`quantized`, e.g. Checkpoint.quantized) for a source of an 8-bit segment of the same format,
    and the 4-bit matrix it stores (`int4`, Checkpoint.int4: GGUF Q4_0 / Q4_1 / Q4_K) for a source
    of an int4 segment, used as stored; otherwise its float weights (quantized on load where the
    segment is quantized: an FP8 checkpoint packed for an int8 plan is requantized from its exact
    dequantized values, a GGUF Q6_K tensor of an int4 plan from its dequantized values)."""

    def __init__(self, weights: Mapping[str, Any], quantized: Mapping[str, Any], layout: Any,
                 int4: Mapping[str, Any] | None = None) -> None:
        self.weights, self.quantized, self.int4 = weights, quantized, int4 or {}
        self.formats = quantized_source_names(layout)

    def __getitem__(self, name: str) -> Any:
        fmt = self.formats.get(name)
        if fmt == "int4" and name in self.int4:
            return self.int4[name]
        if fmt is not None and name in self.quantized:
            q = self.quantized[name]
            if q.fmt == fmt:
                return q
        return self.weights[name]

    def __contains__(self, name: object) -> bool:
        return name in self.weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


def pack_checkpoint(weights: Mapping[str, Any], layout: Any, out: Path,
                    quantized: Mapping[str, Any] | None = None, int4: Mapping[str, Any] | None = None) -> int:
    """Write the packed buffer to `out` (atomically); returns its size in bytes. `quantized`: the
    checkpoint's 8-bit matrices (Checkpoint.quantized), which 8-bit segments take as stored;
    `int4`: its 4-bit matrices (Checkpoint.int4), which int4 segments take as stored."""
    from ..runtime.weights import pack_weights

    if quantized or int4:
        weights = PackingSources(weights, quantized or {}, layout, int4)
    packed = np.ascontiguousarray(pack_weights(layout, weights), dtype="<u2")
    tmp = out.with_name(out.name + ".tmp")
    packed.tofile(tmp)
    tmp.replace(out)
    return packed.nbytes


def read_packed(path: Path, layout: Any) -> np.ndarray:
    """A file `pack_checkpoint` wrote, as the uint16 buffer pack_weights returns (what
    MegaKernelEngine.load_packed and adamk_create() take); ValueError when its size is not the
    layout's."""
    path = Path(path)
    want = layout.weights.total_bytes
    size = path.stat().st_size
    if size != want:
        raise ValueError(f"{path}: {size} bytes of packed weights; the kernel's layout needs {want}")
    return np.fromfile(path, dtype="<u2").astype(np.uint16, copy=False)
